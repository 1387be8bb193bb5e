"""The Envoy bootstrap that puts Tollgate in front of an upstream: a pure builder, no processes.

One listener whose HTTP connection manager runs ``ext_authz`` (to the ``tollgate`` cluster, failing
closed) and then the router to one upstream. ``ext_authz`` speaks gRPC (``grpc_service``, the
default) or HTTP (``http_service``, :data:`HTTP_MODE`): the HTTP form adds what HTTP cannot carry
from Envoy's own view of the connection (``headers_to_add``), drops any client header under those
names first (``disallowed_headers``), and lists exactly which answer headers go upstream, to the
client and into the dynamic metadata (:mod:`authz.http_request`, :mod:`authz.http_response`).

Built from envoy-data-plane's typed messages, so a misspelt field is an error here, not a config
Envoy rejects at start; :func:`bootstrap`
returns the proto3 JSON mapping Envoy reads with ``-c``. Used by the local harness
(:mod:`authz.dev.harness`: tests, ``make demo``, ``make bench``); ``envoy --mode validate`` checks
its output in tests/unit/test_envoy_bootstrap.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from typing import Any

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    HttpUri,
    SocketAddress,
    SubstitutionFormatString,
    TransportSocket,
)
from envoy_data_plane.envoy.config.core.v3 import (
    HttpProtocolOptions as CommonHttpProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    AuthorizationRequest,
    AuthorizationResponse,
    BufferSettings,
    ExtAuthz,
    HttpService,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerTracing,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import ListStringMatcher, RegexMatcher, StringMatcher
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any as PackedAny

from authz import http_request, http_response, response

__all__ = ["GRPC_MODE", "HTTP_MODE", "EnvoyOptions", "bootstrap", "metadata_key"]

GRPC_MODE, HTTP_MODE = "grpc", "http"


def metadata_key(mode: str, key: str) -> str:
    """The dynamic-metadata key (under ``envoy.filters.http.ext_authz``) of ``key`` ("policy",
    "reason", "rule", "decision_id") in ``mode``: over HTTP, Envoy names it after the answer header."""
    return key if mode == GRPC_MODE else "x-tollgate-" + key.replace("_", "-")


def _access_log_format(mode: str) -> str:
    policy, reason = metadata_key(mode, "policy"), metadata_key(mode, "reason")
    return (
        "[envoy] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
        f"policy=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:{policy})% "
        f"reason=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:{reason})%\n"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class EnvoyOptions:
    """What varies between the Envoys Tollgate runs behind. Ports are on ``address``."""

    listen_port: int
    admin_port: int
    authz_port: int | None  # None: no ext_authz filter (a baseline for benchmarks)
    upstream_port: int | None  # None: answer 200 directly, so the upstream never dominates a benchmark
    address: str = "127.0.0.1"
    normalize_path: bool = True  # RFC 3986 normalization before ext_authz and routing
    merge_slashes: bool = True
    authz_timeout: float = 2.0  # seconds Envoy waits for a Check before it denies
    authz_mode: str = GRPC_MODE  # GRPC_MODE (grpc_service, HTTP/2) or HTTP_MODE (http_service, HTTP/1.1)
    # gRPC: streams per HTTP/2 connection to Tollgate. Envoy opens one connection per worker; a
    # limit makes it open more under load, which SO_REUSEPORT spreads over ``--workers`` processes.
    authz_streams: int | None = None
    # Seconds a connection to Tollgate lives before Envoy drains it and opens another: connections
    # are spread when opened, so this lets a replaced or added worker get its share again.
    authz_connection_seconds: float | None = None
    request_body_bytes: int | None = None  # buffer bodies up to this size and send them with the Check
    tracing_port: int | None = None  # an OTLP/gRPC collector: Envoy's spans, parents of Tollgate's
    access_log: bool = False  # one stdout line per request with the decision's policy and reason
    tls: dict[str, str] | None = None  # {"cert", "key", "client_ca"}: mTLS on the listener
    # Where the clusters are, when not on ``address`` (a DNS name is resolved by Envoy: STRICT_DNS).
    authz_host: str = ""
    upstream_host: str = ""
    tracing_host: str = ""
    listen_host: str = ""  # the listener's and the admin's address ("" : ``address``)
    admin_host: str = ""
    # Hosts served by an upstream of their own on ``address``, (host name, port): the demo's audit UI.
    host_upstreams: tuple[tuple[str, int], ...] = ()


def bootstrap(options: EnvoyOptions) -> dict[str, Any]:
    """The static bootstrap for ``options``, as the JSON object Envoy loads."""
    clusters = []
    if options.authz_port is not None:
        clusters.append(
            _cluster(
                "tollgate",
                options.authz_host or options.address,
                options.authz_port,
                http2=options.authz_mode == GRPC_MODE,
                streams=options.authz_streams,
                lifetime=options.authz_connection_seconds,
            )
        )
    if options.upstream_port is not None:
        clusters.append(_cluster("upstream", options.upstream_host or options.address, options.upstream_port))
    for number, (_, port) in enumerate(options.host_upstreams):
        clusters.append(_cluster(f"upstream-{number}", options.address, port))
    if options.tracing_port is not None:
        clusters.append(_cluster("otlp", options.tracing_host or options.address, options.tracing_port, http2=True))
    chain = FilterChain(
        filters=[Filter(name="envoy.filters.network.http_connection_manager", typed_config=_pack(_manager(options)))]
    )
    if options.tls is not None:
        chain.transport_socket = _downstream_tls(options.tls)
    config = Bootstrap(
        admin=Admin(address=_address(options.admin_host or options.address, options.admin_port)),
        static_resources=BootstrapStaticResources(
            listeners=[
                Listener(
                    name="ingress",
                    address=_address(options.listen_host or options.address, options.listen_port),
                    filter_chains=[chain],
                )
            ],
            clusters=clusters,
        ),
    )
    result: dict[str, Any] = config.to_dict()
    return result


def _pack(message: Any) -> PackedAny:
    return PackedAny.pack(message)


def _address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _manager(options: EnvoyOptions) -> HttpConnectionManager:
    filters = []
    if options.authz_port is not None:
        ext_authz = ExtAuthz(
            transport_api_version=ApiVersion.V3,
            failure_mode_allow=False,  # fail closed if Tollgate is unreachable
            include_peer_certificate=True,
        )
        timeout = datetime.timedelta(seconds=options.authz_timeout)
        if options.authz_mode == HTTP_MODE:
            _http_service(ext_authz, timeout)
        else:
            ext_authz.grpc_service = GrpcService(
                envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name="tollgate"), timeout=timeout
            )
        if options.request_body_bytes is not None:
            ext_authz.with_request_body = BufferSettings(max_request_bytes=options.request_body_bytes)
        filters.append(HttpFilter(name="envoy.filters.http.ext_authz", typed_config=_pack(ext_authz)))
    filters.append(HttpFilter(name="envoy.filters.http.router", typed_config=_pack(Router())))
    if options.upstream_port is None:
        route = Route(
            match=RouteMatch(prefix="/"),
            direct_response=DirectResponseAction(status=200, body=DataSource(inline_string="ok\n")),
        )
    else:
        route = Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster="upstream"))
    manager = HttpConnectionManager(
        stat_prefix="ingress",
        normalize_path=options.normalize_path,
        merge_slashes=options.merge_slashes,
        generate_request_id=True,
        route_config=RouteConfiguration(
            virtual_hosts=[*_host_upstreams(options), VirtualHost(name="all", domains=["*"], routes=[route])]
        ),
        http_filters=filters,
    )
    if options.access_log:
        log_format = SubstitutionFormatString(
            text_format_source=DataSource(inline_string=_access_log_format(options.authz_mode))
        )
        manager.access_log = [
            AccessLog(name="envoy.access_loggers.stdout", typed_config=_pack(StdoutAccessLog(log_format=log_format)))
        ]
    if options.tracing_port is not None:
        telemetry = OpenTelemetryConfig(
            grpc_service=GrpcService(
                envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name="otlp"), timeout=datetime.timedelta(seconds=1)
            ),
            service_name="envoy",
        )
        manager.tracing = HttpConnectionManagerTracing(
            provider=TracingHttp(name="envoy.tracers.opentelemetry", typed_config=_pack(telemetry)),
            random_sampling=Percent(value=100),
        )
    return manager


def _http_service(ext_authz: ExtAuthz, timeout: datetime.timedelta) -> None:
    """HTTP ext_authz: every client header goes to Tollgate except the ``x-tollgate-envoy-*`` names,
    which Envoy then sets from the connection itself; the answer's identity headers go upstream
    (replacing client copies), its deny headers to the client, its decision headers into metadata."""
    ext_authz.allowed_headers = ListStringMatcher(patterns=[StringMatcher(safe_regex=RegexMatcher(regex=".*"))])
    ext_authz.disallowed_headers = ListStringMatcher(patterns=[StringMatcher(prefix=http_request.ENVOY_PREFIX)])
    ext_authz.http_service = HttpService(
        server_uri=HttpUri(uri="http://tollgate", cluster="tollgate", timeout=timeout),
        authorization_request=AuthorizationRequest(
            headers_to_add=[HeaderValue(key=name, value=value) for name, value in http_request.ENVOY_ATTRIBUTES.items()]
        ),
        authorization_response=AuthorizationResponse(
            allowed_upstream_headers=_exactly(response.IDENTITY_HEADERS),
            allowed_client_headers=_exactly(("content-type", "cache-control", "www-authenticate")),
            dynamic_metadata_from_headers=_exactly(http_response.METADATA_HEADERS),
        ),
    )


def _exactly(names: tuple[str, ...]) -> ListStringMatcher:
    return ListStringMatcher(patterns=[StringMatcher(exact=name) for name in names])


def _host_upstreams(options: EnvoyOptions) -> list[VirtualHost]:
    return [
        VirtualHost(
            name=f"upstream-{number}",
            domains=[host, f"{host}:{options.listen_port}"],
            routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=f"upstream-{number}"))],
        )
        for number, (host, _) in enumerate(options.host_upstreams)
    ]


def _cluster(
    name: str,
    host: str,
    port: int,
    *,
    http2: bool = False,
    streams: int | None = None,
    lifetime: float | None = None,
) -> Cluster:
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=datetime.timedelta(seconds=1),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_address(host, port)))])],
        ),
    )
    if http2 or lifetime:
        explicit = (
            HttpProtocolOptionsExplicitHttpConfig(
                http2_protocol_options=Http2ProtocolOptions(max_concurrent_streams=streams)
            )
            if http2
            else HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
        )
        options = HttpProtocolOptions(explicit_http_config=explicit)
        if lifetime:
            options.common_http_protocol_options = CommonHttpProtocolOptions(
                max_connection_duration=datetime.timedelta(seconds=lifetime)
            )
        cluster.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _pack(options)
        }
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _downstream_tls(tls: dict[str, str]) -> TransportSocket:
    context = DownstreamTlsContext(
        require_client_certificate=True,
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=tls["cert"]),
                    private_key=DataSource(filename=tls["key"]),
                )
            ],
            validation_context=CertificateValidationContext(trusted_ca=DataSource(filename=tls["client_ca"])),
        ),
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=_pack(context))
