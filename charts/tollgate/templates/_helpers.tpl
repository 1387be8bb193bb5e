{{/*
tollgate.name: the chart's name (or nameOverride), cut to 63 characters, the DNS label limit.
*/}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
tollgate.fullname: the prefix of every object's name. The release name alone if it already
contains the chart name; cut to 63 characters with no trailing "-" (Kubernetes names are DNS
labels). Components add a suffix, so the prefix leaves room for it (at most 50).
*/}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
tollgate.labels: the recommended labels on every object; pass a dict with "root" (the top
context) and "component" (dataplane, operator, gateway).
*/}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/*
tollgate.selectorLabels: what Services, PodDisruptionBudgets and NetworkPolicies select a
component's pods by; never changes across upgrades.
*/}}
{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
tollgate.serviceAccountName: a component's ServiceAccount (the namespace's default one when
serviceAccount.create is off).
*/}}
{{- define "tollgate.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- printf "%s-%s" (include "tollgate.fullname" .root) .component }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/*
tollgate.image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "tollgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
tollgate.podSecurityContext and tollgate.securityContext: non-root, read-only root filesystem,
no capabilities, the runtime's default seccomp profile — for every container of the chart.
*/}}
{{- define "tollgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "tollgate.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
tollgate.auditSecret: the Secret with the audit keys: audit.existingSecret, or the one the operator
creates once at start (never replacing it) when none is named.
*/}}
{{- define "tollgate.auditSecret" -}}
{{- default (printf "%s-audit-keys" (include "tollgate.fullname" .)) .Values.audit.existingSecret }}
{{- end }}

{{/*
tollgate.check: what the schema cannot say; fails the render with one line naming the value.
*/}}
{{- define "tollgate.check" -}}
{{- if and (eq .Values.dataplane.config.source "configMap") (not .Values.dataplane.config.configMapName) }}
{{- fail "dataplane.config.configMapName: required with dataplane.config.source=configMap" }}
{{- end }}
{{- if and .Values.audit.enabled (not .Values.audit.existingSecret) (not .Values.operator.enabled) }}
{{- fail "audit.existingSecret: required without the operator (which otherwise makes the keys): tollgate audit keygen --kubernetes-secret NS/NAME" }}
{{- end }}
{{- if and (eq .Values.dataplane.config.source "operator") (not .Values.operator.enabled) }}
{{- fail "dataplane.config.source=operator needs operator.enabled=true (or use source configMap)" }}
{{- end }}
{{- if and .Values.dataplane.networkPolicy.enabled (not .Values.gateway.enabled) (not .Values.dataplane.networkPolicy.gatewayPodSelector) }}
{{- fail "dataplane.networkPolicy.gatewayPodSelector: name the gateway's pods (an empty selector would admit every pod)" }}
{{- end }}
{{- if and .Values.auditUI.enabled (not .Values.audit.enabled) }}
{{- fail "auditUI.enabled: needs audit.enabled=true (the web view shows the audit log)" }}
{{- end }}
{{- if and .Values.auditUI.enabled .Values.auditUI.createPolicy (not .Values.operator.enabled) }}
{{- fail "auditUI.createPolicy: needs operator.enabled=true (AccessPolicy is the operator's resource); set it false and write the policy into your configuration" }}
{{- end }}
{{- if and (eq .Values.gateway.authzMode "http") (not .Values.dataplane.httpPort) }}
{{- fail "gateway.authzMode=http needs dataplane.httpPort (the data plane's HTTP ext_authz port)" }}
{{- end }}
{{- if and .Values.dataplane.autoscaling.enabled (lt (int .Values.dataplane.autoscaling.maxReplicas) (int .Values.dataplane.autoscaling.minReplicas)) }}
{{- fail "dataplane.autoscaling.maxReplicas: must be at least minReplicas" }}
{{- end }}
{{- end }}
