"""``envoy.service.auth.v3.Authorization/Check``: transport only.

Bytes in, bytes out. The request is parsed here with our own deserializer so that a message the
protobuf runtime rejects (e.g. invalid UTF-8 in a string field) still gets an answer — a deny
with reason ``request_parse_error`` — instead of a gRPC error and a traceback in the log. The
Check itself (decision, answer, metrics, the one audit record in a ``finally``) is run by
:mod:`authz.checks`, which the HTTP ext_authz edge shares; the answer is built and serialized in
:mod:`authz.response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import message as protobuf_message

from authz import check_request as envoy_request
from authz import checks, loops, response, threads
from authz import request as request_model

__all__ = ["SERVICE_NAME", "AuthorizationService"]

SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name


class _Unparseable:
    """Stands in for a CheckRequest the protobuf runtime could not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


Parsed = tuple[external_auth_pb2.CheckRequest, int]  # the request and its serialized length


def _parse(data: bytes) -> Parsed | _Unparseable:
    try:
        return external_auth_pb2.CheckRequest.FromString(data), len(data)
    except protobuf_message.DecodeError as error:
        return _Unparseable(str(error))


class AuthorizationService:
    def __init__(self, runtime: checks.Runtime) -> None:
        self._runtime = runtime

    def method_handlers(self, loop: loops.LockedLoop | None = None) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        """``{"Check": handler}``, for both ``add_registered_method_handlers`` and a generic handler.
        Without ``loop``: for grpc.aio (the coroutine itself). With it: for grpcio's synchronous
        server, each Check decided on the gRPC thread that received it, under ``loop``'s lock
        (:mod:`authz.threads`).

        Registering the method (as the generated ``add_..._to_server`` functions do) lets gRPC core
        route each call itself instead of a Python lookup per call: measurably cheaper per Check.
        """
        return {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check if loop is None else threads.behavior(loop, self.check),
                request_deserializer=_parse,
                response_serializer=None,  # check() answers with the serialized CheckResponse
            )
        }

    async def check(self, parsed: Parsed | _Unparseable, context: Any) -> bytes:
        runtime = self._runtime
        if isinstance(parsed, _Unparseable):
            return await checks.run(runtime, None, _no_carrier, response.encode, response.encode_failed)
        check_request, wire_size = parsed
        strict = runtime.strict_paths

        def read() -> request_model.HttpRequest:
            return envoy_request.from_check_request(check_request, wire_size, strict=strict)

        def carrier() -> Any:
            return _trace_carrier(check_request.attributes.request.http.headers, context)

        return await checks.run(runtime, read, carrier, response.encode, response.encode_failed)


def _no_carrier() -> Mapping[str, str]:
    return {}


_TRACE_KEYS = frozenset(
    {
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-b3-parentspanid",
    }
)


def _trace_carrier(headers: Any, context: Any) -> Any:
    """Where the caller's trace context is: Envoy's ext_authz client puts its span in the gRPC
    metadata of the Check call (the exact parent); other callers may only have it in the HTTP
    headers of the CheckRequest."""
    metadata = context.invocation_metadata() if context is not None else None
    if metadata:
        carrier = {item[0]: item[1] for item in metadata if item[0] in _TRACE_KEYS}
        if carrier:
            return carrier
    return headers
