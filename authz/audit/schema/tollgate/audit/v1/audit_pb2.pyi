from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditRecord(_message.Message):
    __slots__ = ("v", "kind", "id", "seq", "origin", "prev", "time", "time_ms", "decision", "status", "reason", "message", "policy", "rule", "revision", "dry_run", "identity", "request", "trace", "latency_us", "pseudonym_key", "loss", "previous", "tree", "server", "retention", "alert")
    V_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_KEY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    v: int
    kind: str
    id: str
    seq: int
    origin: str
    prev: str
    time: str
    time_ms: int
    decision: str
    status: int
    reason: str
    message: str
    policy: str
    rule: str
    revision: str
    dry_run: DryRun
    identity: Identity
    request: Request
    trace: Trace
    latency_us: int
    pseudonym_key: str
    loss: Loss
    previous: PreviousCheckpoint
    tree: TreeState
    server: Server
    retention: Retention
    alert: Alert
    def __init__(self, v: _Optional[int] = ..., kind: _Optional[str] = ..., id: _Optional[str] = ..., seq: _Optional[int] = ..., origin: _Optional[str] = ..., prev: _Optional[str] = ..., time: _Optional[str] = ..., time_ms: _Optional[int] = ..., decision: _Optional[str] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., policy: _Optional[str] = ..., rule: _Optional[str] = ..., revision: _Optional[str] = ..., dry_run: _Optional[_Union[DryRun, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., request: _Optional[_Union[Request, _Mapping]] = ..., trace: _Optional[_Union[Trace, _Mapping]] = ..., latency_us: _Optional[int] = ..., pseudonym_key: _Optional[str] = ..., loss: _Optional[_Union[Loss, _Mapping]] = ..., previous: _Optional[_Union[PreviousCheckpoint, _Mapping]] = ..., tree: _Optional[_Union[TreeState, _Mapping]] = ..., server: _Optional[_Union[Server, _Mapping]] = ..., retention: _Optional[_Union[Retention, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "state", "detector", "key_kind", "key", "count", "threshold", "window_seconds", "first_decision", "last_decision", "first_time_ms", "last_time_ms", "pseudonym_key")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    KEY_KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_DECISION_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_KEY_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    state: str
    detector: str
    key_kind: str
    key: str
    count: int
    threshold: int
    window_seconds: int
    first_decision: str
    last_decision: str
    first_time_ms: int
    last_time_ms: int
    pseudonym_key: str
    def __init__(self, alert_id: _Optional[str] = ..., state: _Optional[str] = ..., detector: _Optional[str] = ..., key_kind: _Optional[str] = ..., key: _Optional[str] = ..., count: _Optional[int] = ..., threshold: _Optional[int] = ..., window_seconds: _Optional[int] = ..., first_decision: _Optional[str] = ..., last_decision: _Optional[str] = ..., first_time_ms: _Optional[int] = ..., last_time_ms: _Optional[int] = ..., pseudonym_key: _Optional[str] = ...) -> None: ...

class Retention(_message.Message):
    __slots__ = ("origin", "segment", "first_seq", "last_seq", "checkpoint", "action")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    origin: str
    segment: str
    first_seq: int
    last_seq: int
    checkpoint: str
    action: str
    def __init__(self, origin: _Optional[str] = ..., segment: _Optional[str] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., checkpoint: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class DryRun(_message.Message):
    __slots__ = ("decision", "reason", "policy", "rule")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    decision: str
    reason: str
    policy: str
    rule: str
    def __init__(self, decision: _Optional[str] = ..., reason: _Optional[str] = ..., policy: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("authenticated", "subject", "email", "issuer", "method", "provider", "groups", "roles", "mfa", "principal", "key_id")
    AUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    MFA_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    authenticated: bool
    subject: str
    email: str
    issuer: str
    method: str
    provider: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    mfa: bool
    principal: str
    key_id: str
    def __init__(self, authenticated: _Optional[bool] = ..., subject: _Optional[str] = ..., email: _Optional[str] = ..., issuer: _Optional[str] = ..., method: _Optional[str] = ..., provider: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., mfa: _Optional[bool] = ..., principal: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("method", "host", "path", "query_params", "protocol", "request_id", "user_agent", "source_ip", "destination")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    method: str
    host: str
    path: str
    query_params: _containers.RepeatedScalarFieldContainer[str]
    protocol: str
    request_id: str
    user_agent: str
    source_ip: str
    destination: str
    def __init__(self, method: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., query_params: _Optional[_Iterable[str]] = ..., protocol: _Optional[str] = ..., request_id: _Optional[str] = ..., user_agent: _Optional[str] = ..., source_ip: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class Trace(_message.Message):
    __slots__ = ("trace_id", "span_id")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    span_id: str
    def __init__(self, trace_id: _Optional[str] = ..., span_id: _Optional[str] = ...) -> None: ...

class Loss(_message.Message):
    __slots__ = ("count", "reason", "first_time_ms", "last_time_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    reason: str
    first_time_ms: int
    last_time_ms: int
    def __init__(self, count: _Optional[int] = ..., reason: _Optional[str] = ..., first_time_ms: _Optional[int] = ..., last_time_ms: _Optional[int] = ...) -> None: ...

class PreviousCheckpoint(_message.Message):
    __slots__ = ("origin", "size", "root")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    origin: str
    size: int
    root: str
    def __init__(self, origin: _Optional[str] = ..., size: _Optional[int] = ..., root: _Optional[str] = ...) -> None: ...

class TreeState(_message.Message):
    __slots__ = ("size", "hashes")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    size: int
    hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, size: _Optional[int] = ..., hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class Server(_message.Message):
    __slots__ = ("instance", "session", "version", "checkpoint_interval_ms")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    instance: str
    session: str
    version: str
    checkpoint_interval_ms: int
    def __init__(self, instance: _Optional[str] = ..., session: _Optional[str] = ..., version: _Optional[str] = ..., checkpoint_interval_ms: _Optional[int] = ...) -> None: ...

class CheckpointEntry(_message.Message):
    __slots__ = ("size", "note")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    size: int
    note: str
    def __init__(self, size: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...
