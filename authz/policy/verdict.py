"""The result of evaluating policies: plain values, shared by the compiler and the evaluator.

Verdicts for rule matches and host defaults are built once, at compile time, and returned as they
are on every request that matches; only a DryRun report makes a new one.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DryRunVerdict", "Verdict"]


@dataclasses.dataclass(frozen=True, slots=True)
class DryRunVerdict:
    """What would have happened had the host's DryRun policies been enforced too."""

    allowed: bool
    reason: str
    policy: str
    rule: str


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str  # rule_allow | rule_deny | default_allow | default_deny | no_policy | dry_run_only
    policy: str = ""
    rule: str = ""
    dry_run: DryRunVerdict | None = None
