"""An object's ``status`` in Kubernetes' conventions, from what :mod:`authz_operator.build` decided.

Pure: the reconciler (:mod:`authz_operator.reconcile`) hands in the status the object has now and
gets back the one to write, or None when nothing a reader would see has changed — so an operator
that restarts, or a change to another object, writes nothing here.

The shape (``kubectl get ap -o yaml``)::

    status:
      observedGeneration: 3          # the metadata.generation these conditions judged
      revision: 3f2a9c01be77         # the published configuration that holds this version
      digest: 9b1c0d2e4f5a           # this object's part of it (changes when its content does)
      conditions:
      - type: Accepted | Ready | Conflicted
        status: "True" | "False"
        reason: CamelCase
        message: ...
        lastTransitionTime: RFC 3339  # when status last flipped, not when the message changed
        observedGeneration: 3
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from authz_operator import build

__all__ = ["now", "status_for", "transitions"]


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_for(
    current: Mapping[str, Any] | None, computed: build.ObjectStatus, generation: int, at: str
) -> dict[str, Any] | None:
    """The status to write, or None if ``current`` already says all of it.

    ``revision`` moves only when the object's own published content changes (its digest), so the
    revision shown is the one that first carried this version of the object."""
    current = current or {}
    before = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    conditions = []
    for condition in computed.conditions:
        previous = before.get(condition.type) or {}
        conditions.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": previous.get("lastTransitionTime", at)
                if previous.get("status") == condition.status
                else at,
                "observedGeneration": generation,
            }
        )
    same_content = current.get("digest", "") == computed.digest
    wanted = {
        "observedGeneration": generation,
        "revision": current.get("revision", "") if same_content and current.get("revision") else computed.revision,
        "digest": computed.digest,
        "conditions": conditions,
    }
    if not computed.digest:
        wanted["revision"] = ""
    shown = {key: current.get(key) for key in wanted}
    return None if shown == wanted else wanted


def transitions(current: Mapping[str, Any] | None, computed: build.ObjectStatus) -> list[build.Condition]:
    """The conditions whose status or reason changed: each is worth a Kubernetes Event."""
    before = {c.get("type"): c for c in (current or {}).get("conditions") or [] if isinstance(c, Mapping)}
    changed = []
    for condition in computed.conditions:
        previous = before.get(condition.type) or {}
        if (previous.get("status"), previous.get("reason")) != (condition.status, condition.reason):
            changed.append(condition)
    return changed
