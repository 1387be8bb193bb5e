# Tollgate: the data plane (`tollgate serve`) and the operator (`tollgate operator`) in one image.
# Build: docker build -t tollgate:dev .    (the kind e2e test builds and loads it: make e2e)

# --- build: wheels for Tollgate and its pinned dependencies (no compilers reach the final image)
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY authz ./authz
COPY operator ./operator
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .
# xds-protos ships old copies of opentelemetry/proto; the real opentelemetry-proto is installed last.
RUN python -m pip download --no-cache-dir --no-deps --dest /wheels/last -c constraints.txt opentelemetry-proto

# --- run: slim Python, a non-root user, no build tools, no Envoy (the gateway runs Envoy's own image)
FROM python:3.12-slim
RUN groupadd --gid 10001 tollgate && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tollgate
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels tollgate \
 && python -m pip install --no-cache-dir --no-index --force-reinstall --no-deps /wheels/last/*.whl \
 && rm -rf /wheels /root/.cache
USER 10001:10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 9001 9443 8080
ENTRYPOINT ["tollgate"]
CMD ["serve", "--help"]
