"""Decision ids: UUIDv7 (RFC 9562), time-ordered, so decision ids sort by time in any log.

Used for every decision (:mod:`authz.decision`) and for the audit log's sessions and events.
"""

from __future__ import annotations

import itertools
import secrets
import time

__all__ = ["new_id"]

# Decision ids must be unique, not secret: nothing is authorized by one. So after the time come
# 26 bits drawn once per process and a 48-bit counter from a random start (RFC 9562 §6.2,
# method 1): unique within the process, ordered within a millisecond, apart from other replicas'.
_sequence = itertools.count(secrets.randbits(48))
_process_bits = "%03x-%04x-" % (secrets.randbits(12), 0x8000 | secrets.randbits(14))  # noqa: UP031
# Formatting integers is the slow part under load (~2 µs a call, its code cold between Checks), so
# the id is put together from pieces formatted when they change: the high 32 bits of the time
# (every ~49 days), the counter's high 40 bits (every 256 ids), and two-digit hex from a table.
_HEX2 = tuple(f"{i:02x}" for i in range(256))
_clock_ms = _time_high = _count_high = -1
_time_high_text = _count_high_text = _prefix = ""


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so decision ids sort by time in any log.

    48-bit Unix time in ms, version 7, 12 + 14 bits fixed per process around the RFC variant,
    then the 48-bit counter.
    """
    global _clock_ms, _time_high, _count_high, _time_high_text, _count_high_text, _prefix  # noqa: PLW0603 (hot path)
    now_ms = time.time_ns() // 1_000_000
    count = next(_sequence) & 0xFFFFFFFFFFFF
    if now_ms != _clock_ms or count >> 8 != _count_high:
        if now_ms >> 16 != _time_high:
            _time_high, _time_high_text = now_ms >> 16, "%08x" % (now_ms >> 16 & 0xFFFFFFFF)
        if count >> 8 != _count_high:
            _count_high, _count_high_text = count >> 8, "%010x" % (count >> 8)
        _clock_ms = now_ms
        _prefix = (
            f"{_time_high_text}-{_HEX2[now_ms >> 8 & 0xFF]}{_HEX2[now_ms & 0xFF]}-7{_process_bits}{_count_high_text}"
        )
    return _prefix + _HEX2[count & 0xFF]
