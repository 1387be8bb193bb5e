"""Audit records: the writer's fast encoding equals the reference canonical form for every kind of
record the log writes, and records carry what docs/audit.md promises (and nothing more)."""

from __future__ import annotations

import asyncio
import datetime
import json
import pathlib
import random
from typing import Any

import jsonschema
from google.protobuf import descriptor

from authz import decision, loader
from authz.audit import log as audit_log
from authz.audit import note, pseudonym, record, recorder
from authz.audit.schema.tollgate.audit.v1 import audit_pb2
from authz.dev import auditlog, checks
from authz.identity import model

POLICIES = """
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: live}
spec: {hosts: [a.test], defaultAction: Allow}
---
apiVersion: tollgate.dev/v1alpha1
kind: AccessPolicy
metadata: {name: trial}
spec: {hosts: [a.test], mode: DryRun, rules: [{name: only-get, action: Allow, to: {methods: [GET]}}]}
"""


class Alice:
    def resolve_now(self, request: object, scope: object) -> model.Identity | None:
        return None  # always through the awaited path, as a token verified for the first time

    async def resolve(self, request: object, scope: object) -> model.Identity:
        return model.Identity(
            authenticated=True, method="jwt", subject="alice", email="a@example.com", groups=("g",), mfa=True
        )


def test_every_record_kind_is_written_canonically(tmp_path: pathlib.Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICIES)
    snapshot = loader.load(tmp_path / "p.yaml")
    pseudonym.generate_key_file(tmp_path / "keys.yaml", "k1")
    keys = pseudonym.load_keys(tmp_path / "keys.yaml")
    skey, _ = note.generate("tollgate.dev/audit/unit")
    settings = audit_log.LogSettings(segment_max_bytes=2000, checkpoint_every=3)

    async def write() -> None:
        for _ in range(2):  # two sessions: the second's session_start carries `previous`
            log = audit_log.AuditLog(tmp_path / "audit", note.Signer.from_skey(skey), instance="i", settings=settings)
            audit = recorder.AuditRecorder(log, keys, queue_size=2)
            await audit.start()
            for method in ("GET", "POST", "DELETE") * 3:
                result = await decision.decide_check(
                    checks.check_request(method=method, host="a.test", path="/p?x=1&y=2"), snapshot, Alice()
                )
                await audit.record(result)  # the tiny queue overflows: loss records too
            await audit.close()

    asyncio.run(write())
    kinds = set()
    for segment in (tmp_path / "audit").rglob("segment-*.jsonl"):
        for line in segment.read_bytes().splitlines(keepends=True):
            parsed = json.loads(line)
            kinds.add(parsed["kind"])
            assert record.canonical(parsed) == line, parsed["kind"]
            if parsed["kind"] == "decision":
                assert "dry_run" in parsed and parsed["identity"]["subject"] == keys("alice")
                assert parsed["identity"]["email"] == keys("a@example.com")
                assert parsed["request"]["query_params"] == ["x", "y"]
    assert kinds == {"session_start", "segment_start", "decision", "loss", "session_end"}


def test_outcomes() -> None:
    def outcome(allowed: bool, status: int) -> str:
        return record._outcome(decision.Decision(decision_id="x", revision="r", allowed=allowed, status=status))

    assert outcome(True, 200) == "allow"
    assert outcome(False, 403) == "deny" and outcome(False, 401) == "deny" and outcome(False, 400) == "deny"
    assert outcome(False, 500) == "error" and outcome(False, 503) == "error"


def test_time_format() -> None:
    moment = datetime.datetime(2026, 11, 23, 20, 51, 37, 944000, tzinfo=datetime.UTC)
    time_ms = int(moment.timestamp() * 1000)
    assert record.format_time(time_ms) == "2026-11-23T20:51:37.944Z"
    assert record.format_time(time_ms - 940).endswith(":37.004Z")
    # The second is formatted once and remembered: going back and forth across seconds (and
    # across a day) must give what formatting from scratch gives.
    rng = random.Random(5)
    for candidate in [time_ms, time_ms + 56, time_ms - 1000, time_ms + 1, 0, 999, 1000] + [
        rng.randrange(0, 4_000_000_000_000) for _ in range(2000)
    ]:
        moment = datetime.datetime.fromtimestamp(candidate / 1000, tz=datetime.UTC)
        assert record.format_time(candidate) == moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{candidate % 1000:03d}Z"


def test_schema_check_catches_what_the_proto_forbids() -> None:
    good = {"v": 1, "kind": "decision", "seq": 3, "identity": {"groups": ["a"], "mfa": True}, "previous": None}
    assert record.schema_problem(good) == ""
    for bad, message in (
        ({"bogus": 1}, "unknown field 'bogus'"),
        ({"seq": "3"}, "'seq' must be an integer"),
        ({"seq": True}, "'seq' must be an integer"),
        ({"identity": {"groups": "a"}}, "'identity.groups' must be a list"),
        ({"identity": {"mfa": "yes"}}, "'identity.mfa' has the wrong type"),
        ({"request": ["x"]}, "'request' must be an object"),
        ({"identity": {"extra": 1}}, "unknown field 'identity.extra'"),
    ):
        assert record.schema_problem(bad) == message


def _reference_schema_problem(value: dict[str, Any], message: Any, path: str = "") -> str:
    """The schema check as a plain walk over protobuf's descriptors, field by field: what the
    compiled check in authz.audit.record must always answer."""
    for key, item in value.items():
        field = message.fields_by_name.get(key)
        where = f"{path}{key}"
        if field is None:
            return f"unknown field {where!r}"
        if item is None and field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.is_repeated and not isinstance(item, list):
            return f"{where!r} must be a list"
        for element in item if field.is_repeated else [item]:
            if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                if not isinstance(element, dict):
                    return f"{where!r} must be an object"
                problem = _reference_schema_problem(element, field.message_type, where + ".")
                if problem:
                    return problem
            elif field.type == descriptor.FieldDescriptor.TYPE_STRING:
                if not isinstance(element, str):
                    return f"{where!r} has the wrong type"
            elif field.type == descriptor.FieldDescriptor.TYPE_BOOL:
                if not isinstance(element, bool):
                    return f"{where!r} has the wrong type"
            elif not isinstance(element, int) or isinstance(element, bool):
                return f"{where!r} must be an integer"
    return ""


def test_compiled_schema_check_agrees_with_the_descriptors() -> None:
    # Real records of every kind, then thousands of them with values swapped for ill-typed ones,
    # objects where lists go and back, unknown keys and nulls, at every depth.
    rng = random.Random(5)
    keys = pseudonym.Pseudonymizer([("k1", b"k" * 32)])
    records = [
        record.decision_record(auditlog.synthetic_decision(rng, index), 1_700_000_000_000, keys) for index in range(50)
    ]
    odd: list[Any] = [None, 0, -1, 2**70, True, False, "x", "", 1.5, [], [1], ["a"], [None], {}, {"z": 1}, [{}]]

    def mutate(value: Any) -> Any:
        if isinstance(value, dict) and value and rng.random() < 0.7:
            copy = dict(value)
            key = rng.choice([*copy, "bogus"])
            copy[key] = mutate(copy[key]) if key in copy and rng.random() < 0.5 else rng.choice(odd)
            return copy
        if isinstance(value, list) and value and rng.random() < 0.5:
            return [mutate(element) for element in value]
        return rng.choice(odd)

    answers = set()
    for case in range(4000):
        value = mutate(rng.choice(records)) if case else records[0]
        if not isinstance(value, dict):
            continue
        expected = _reference_schema_problem(value, audit_pb2.AuditRecord.DESCRIPTOR)
        assert record.schema_problem(value) == expected, value
        answers.add(expected.split(" ")[-1])
    assert {"", "list", "object", "integer", "type"} <= answers  # every kind of answer was exercised


def test_records_match_the_published_json_schema(tmp_path: pathlib.Path) -> None:
    schema = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "audit-record.schema.json").read_text())
    test_every_record_kind_is_written_canonically(tmp_path)
    validator = jsonschema.Draft202012Validator(schema)
    for segment in (tmp_path / "audit").rglob("segment-*.jsonl"):
        for line in segment.read_bytes().splitlines():
            errors = list(validator.iter_errors(json.loads(line)))
            assert not errors, errors[0].message


def test_fast_canonical_check_agrees_with_the_reference() -> None:
    rng = random.Random(3)
    base = {"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": "é"}, "c": [], "d": None}
    for _ in range(200):

        def shuffle(value: object) -> object:
            if isinstance(value, dict):
                items = list(value.items())
                rng.shuffle(items)
                return {k: shuffle(v) for k, v in items}
            if isinstance(value, list):
                return [shuffle(v) for v in value]
            return value

        candidate = shuffle(base)
        for line in (
            record.canonical(candidate),
            record.encode(candidate),
            json.dumps(candidate, separators=(",", ":"), ensure_ascii=False).encode() + b"\n",
        ):
            parsed = json.loads(line)
            assert record.is_canonical(line, parsed) == (record.canonical(parsed) == line)


def test_writer_encoding_is_the_reference_for_any_text() -> None:
    # The writer encodes with orjson, the verifier demands json.dumps' canonical form: they must
    # agree byte for byte on whatever a request or token can put into a record.
    rng = random.Random(11)
    alphabet = [chr(i) for i in range(0x250)] + ["\u2028", "\u2029", "\ufeff", "\u0085", "😀", "\U0010ffff", "中"]
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        item = {"s": text, "l": [text, 0, -1, 2**63, True, None], "d": {text: 1, "z": {"k": text}}}
        assert record.encode(item) == record.canonical(item), repr(text)
    for awkward in ({"big": 2**70}, {"neg": -(2**70)}):  # beyond orjson: the reference path
        assert record.encode(awkward) == record.canonical(awkward)
