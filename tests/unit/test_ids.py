"""authz.ids: decision ids are UUIDv7, unique and time-ordered, though assembled from cached pieces."""

from __future__ import annotations

import itertools
import time
import uuid

from authz import ids


def test_decision_ids_are_unique_time_ordered_uuid7s() -> None:
    before = time.time_ns() // 1_000_000
    made = [ids.new_id() for _ in range(50_000)]
    after = time.time_ns() // 1_000_000
    assert len(set(made)) == len(made)
    for text in made[::997]:
        value = uuid.UUID(text)
        assert str(value) == text
        assert (value.version, value.variant) == (7, uuid.RFC_4122)
        assert before <= value.int >> 80 <= after
    assert made == sorted(made)  # time first, then the counter: ordered within a millisecond too
    counters = [uuid.UUID(text).int & (2**48 - 1) for text in made]
    # Consecutive ids count up by one, also where the cached high part of the counter rolls over.
    assert all((b - a) % 2**48 == 1 for a, b in itertools.pairwise(counters))
