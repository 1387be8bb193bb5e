{{/*
tollgate.dataplanePod: the data plane's pod template, shared by its Deployment (audit on emptyDir)
and its StatefulSet (audit on a PersistentVolumeClaim per replica).
*/}}
{{- define "tollgate.dataplanePod" -}}
{{- $c := dict "root" . "component" "dataplane" -}}
metadata:
  labels:
    {{- include "tollgate.labels" $c | nindent 4 }}
  {{- if and .Values.detection.enabled .Values.detection.settings }}
  annotations:
    # the detectors' settings are read at start: a change rolls the pods
    checksum/detectors: {{ toYaml .Values.detection.settings | sha256sum }}
  {{- end }}
spec:
  serviceAccountName: {{ include "tollgate.serviceAccountName" $c }}
  automountServiceAccountToken: {{ eq .Values.dataplane.config.source "operator" }}
  securityContext:
    {{- include "tollgate.podSecurityContext" . | nindent 4 }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # SIGTERM: health NOT_SERVING, in-flight Checks finish within --grace, the audit queue drains.
  terminationGracePeriodSeconds: {{ add (int .Values.dataplane.grace) 15 }}
  {{- if .Values.dataplane.topologySpread }}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "tollgate.selectorLabels" $c | nindent 10 }}
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "tollgate.selectorLabels" $c | nindent 10 }}
  {{- end }}
  {{- with .Values.dataplane.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.dataplane.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: tollgate
      image: {{ include "tollgate.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: [serve]
      env:
        {{- if eq .Values.dataplane.config.source "operator" }}
        - {name: TOLLGATE_CONFIG, value: "kubernetes:{{ .Release.Namespace }}/{{ .Values.operator.publishName }}"}
        {{- else }}
        - {name: TOLLGATE_CONFIG, value: /etc/tollgate/config}
        {{- end }}
        - {name: TOLLGATE_LISTEN, value: "0.0.0.0:{{ .Values.dataplane.grpcPort }}"}
        - {name: TOLLGATE_METRICS_LISTEN, value: "0.0.0.0:{{ .Values.dataplane.metricsPort }}"}
        {{- if .Values.dataplane.httpPort }}
        - {name: TOLLGATE_HTTP_LISTEN, value: "0.0.0.0:{{ .Values.dataplane.httpPort }}"}
        {{- end }}
        {{- if gt (int .Values.dataplane.workers) 1 }}
        - {name: TOLLGATE_WORKERS, value: {{ .Values.dataplane.workers | quote }}}
        {{- end }}
        {{- if .Values.dataplane.maxConnections }}
        - {name: TOLLGATE_MAX_CONNECTIONS, value: {{ .Values.dataplane.maxConnections | quote }}}
        {{- end }}
        - {name: TOLLGATE_GRPC_ENGINE, value: {{ .Values.dataplane.grpcEngine | quote }}}
        {{- if ne .Values.dataplane.grpcEngine "aio" }}
        - {name: TOLLGATE_GRPC_THREADS, value: {{ .Values.dataplane.grpcThreads | quote }}}
        {{- end }}
        - {name: TOLLGATE_CPU_AFFINITY, value: {{ .Values.dataplane.cpuAffinity | quote }}}
        - {name: TOLLGATE_DEFAULT_ACTION, value: {{ .Values.dataplane.defaultAction | quote }}}
        - {name: TOLLGATE_PATH_MODE, value: {{ .Values.dataplane.pathMode | quote }}}
        - {name: TOLLGATE_GRACE, value: {{ .Values.dataplane.grace | quote }}}
        - {name: TOLLGATE_LOG_LEVEL, value: {{ .Values.dataplane.logLevel | quote }}}
        {{- if .Values.audit.enabled }}
        - {name: TOLLGATE_AUDIT_DIR, value: /var/lib/tollgate/audit}
        - {name: TOLLGATE_AUDIT_SIGNING_KEY, value: /etc/tollgate/audit-keys/signing.key}
        - {name: TOLLGATE_AUDIT_PSEUDONYM_KEYS, value: /etc/tollgate/audit-keys/pseudonyms.yaml}
        - {name: TOLLGATE_AUDIT_MODE, value: {{ .Values.audit.mode | quote }}}
        - {name: TOLLGATE_AUDIT_RETAIN_SEGMENTS, value: {{ .Values.audit.retainSegments | quote }}}
        - name: TOLLGATE_AUDIT_INSTANCE  # one log per pod: the pod's name (stable in a StatefulSet)
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        {{- if .Values.audit.otelLogs }}
        - {name: TOLLGATE_AUDIT_OTEL_LOGS, value: "true"}
        {{- end }}
        {{- end }}
        {{- if .Values.otel.endpoint }}
        - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ .Values.otel.endpoint | quote }}}
        - {name: OTEL_TRACES_EXPORTER, value: otlp}
        - {name: OTEL_SERVICE_NAME, value: {{ .Values.otel.serviceName | quote }}}
        {{- if .Values.otel.metrics }}
        - {name: OTEL_METRICS_EXPORTER, value: otlp}
        {{- end }}
        {{- end }}
        {{- if .Values.detection.enabled }}
        {{- with .Values.detection.alertmanagerUrl }}
        - {name: TOLLGATE_ALERTMANAGER_URL, value: {{ . | quote }}}
        {{- end }}
        {{- if .Values.detection.settings }}
        - {name: TOLLGATE_DETECTORS, value: /etc/tollgate/detectors/detectors.yaml}
        {{- end }}
        {{- else }}
        - {name: TOLLGATE_DETECTION, value: "off"}
        {{- end }}
        {{- range .Values.dataplane.extraEnv }}
        - {name: {{ .name }}, value: {{ .value | quote }}}
        {{- end }}
      ports:
        - {name: grpc, containerPort: {{ .Values.dataplane.grpcPort }}, protocol: TCP}
        {{- if .Values.dataplane.httpPort }}
        - {name: http-authz, containerPort: {{ .Values.dataplane.httpPort }}, protocol: TCP}
        {{- end }}
        - {name: metrics, containerPort: {{ .Values.dataplane.metricsPort }}, protocol: TCP}
      # Started: the gRPC health service says SERVING (the configuration is loaded, the port bound).
      startupProbe:
        grpc: {port: {{ .Values.dataplane.grpcPort }}}
        periodSeconds: 2
        failureThreshold: 60
      # Ready: configuration loaded, not draining, and in sync audit mode the log writable.
      readinessProbe:
        httpGet: {path: /readyz, port: metrics}
        periodSeconds: 5
        failureThreshold: 2
      # Alive: the event loop answers.
      livenessProbe:
        httpGet: {path: /healthz, port: metrics}
        periodSeconds: 10
        failureThreshold: 3
      resources:
        {{- toYaml .Values.dataplane.resources | nindent 8 }}
      securityContext:
        {{- include "tollgate.securityContext" . | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        {{- if .Values.audit.enabled }}
        - {name: audit, mountPath: /var/lib/tollgate/audit}
        - {name: audit-keys, mountPath: /etc/tollgate/audit-keys, readOnly: true}
        {{- end }}
        {{- if eq .Values.dataplane.config.source "configMap" }}
        - {name: config, mountPath: /etc/tollgate/config, readOnly: true}
        {{- end }}
        {{- if and .Values.detection.enabled .Values.detection.settings }}
        - {name: detectors, mountPath: /etc/tollgate/detectors, readOnly: true}
        {{- end }}
    {{- if .Values.auditUI.enabled }}
    # The auditors' web view: reads this pod's log (read-only) and verifies it with the verifier key;
    # never the signing key. Who may look is decided by Tollgate in front of it (docs/audit.md).
    - name: audit-ui
      image: {{ include "tollgate.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - audit
        - ui
        - /var/lib/tollgate/audit
        - --key=/etc/tollgate/audit-verifier/verifier.key
        - --listen=0.0.0.0:{{ .Values.auditUI.port }}
        - --index=/var/cache/tollgate/audit-index.sqlite3
        {{- if .Values.auditUI.searchRealNames }}
        - --pseudonym-keys=/etc/tollgate/audit-verifier/pseudonyms.yaml
        {{- end }}
        {{- with .Values.auditUI.traceUrl }}
        - --trace-url={{ . }}
        {{- end }}
      ports:
        - {name: audit-ui, containerPort: {{ .Values.auditUI.port }}, protocol: TCP}
      readinessProbe:
        httpGet: {path: /healthz, port: audit-ui}
        periodSeconds: 10
      livenessProbe:
        httpGet: {path: /healthz, port: audit-ui}
        periodSeconds: 20
        failureThreshold: 3
      resources:
        {{- toYaml .Values.auditUI.resources | nindent 8 }}
      securityContext:
        {{- include "tollgate.securityContext" . | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: audit, mountPath: /var/lib/tollgate/audit, readOnly: true}
        - {name: audit-verifier, mountPath: /etc/tollgate/audit-verifier, readOnly: true}
        - {name: audit-ui-index, mountPath: /var/cache/tollgate}
    {{- end }}
  volumes:
    - name: tmp
      emptyDir: {sizeLimit: 64Mi}
    {{- if .Values.auditUI.enabled }}
    - name: audit-ui-index  # a cache: rebuilt from the log when the pod starts
      emptyDir: {sizeLimit: 2Gi}
    - name: audit-verifier
      secret:
        secretName: {{ include "tollgate.auditSecret" . }}
        defaultMode: 0440
        items:
          - {key: verifier.key, path: verifier.key}
          {{- if .Values.auditUI.searchRealNames }}
          - {key: pseudonyms.yaml, path: pseudonyms.yaml}
          {{- end }}
    {{- end }}
    {{- if and .Values.audit.enabled (not .Values.audit.persistence.enabled) }}
    - name: audit  # lost with the pod: ship records (audit.otelLogs) or use audit.persistence
      emptyDir: {}
    {{- end }}
    {{- if .Values.audit.enabled }}
    - name: audit-keys
      secret:
        secretName: {{ include "tollgate.auditSecret" . }}
        defaultMode: 0440
        items:
          - {key: signing.key, path: signing.key}
          - {key: pseudonyms.yaml, path: pseudonyms.yaml}
    {{- end }}
    {{- if eq .Values.dataplane.config.source "configMap" }}
    - name: config  # the documents and the files they name, in one directory
      projected:
        sources:
          - configMap: {name: {{ .Values.dataplane.config.configMapName }}}
          {{- with .Values.dataplane.config.secretName }}
          - secret: {name: {{ . }}}
          {{- end }}
    {{- end }}
    {{- if and .Values.detection.enabled .Values.detection.settings }}
    - name: detectors
      configMap: {name: {{ include "tollgate.fullname" . }}-detectors}
    {{- end }}
{{- end }}
