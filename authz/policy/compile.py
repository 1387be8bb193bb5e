"""Compile AccessPolicies into an index: host → the rules that apply there, with prebuilt matchers.

Called by :mod:`authz.loader` whenever the configuration (re)loads; the result is immutable and
swapped in atomically. Lookup cost depends on the number of labels in the host, not on the number
of policies, so unrelated policies never slow a decision down.

Merging is deterministic: policies are sorted by ``namespace/name`` before anything else, so the
rule reported for a decision never depends on file or load order.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Sequence

from authz import request as request_model
from authz.identity import model as identity_model
from authz.policy import model
from authz.policy.verdict import Verdict

__all__ = [
    "CompiledRule",
    "Conflict",
    "Context",
    "HostPolicies",
    "Patterns",
    "PolicyIndex",
    "SourceUnreadable",
    "compile_policies",
]


class Patterns:
    """A set of exact / ``prefix*`` / ``*suffix`` / ``*`` string patterns, matched in O(1)+O(k)."""

    __slots__ = ("any", "exact", "prefixes", "suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact, prefixes, suffixes = set(), [], []
        self.any = False
        for pattern in patterns:
            if pattern == "*":
                self.any = True
            elif pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            elif pattern.startswith("*"):
                suffixes.append(pattern[1:])
            else:
                exact.add(pattern)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)

    def match(self, value: str) -> bool:
        return (
            self.any
            or value in self.exact
            or (bool(self.prefixes) and value.startswith(self.prefixes))
            or (bool(self.suffixes) and value.endswith(self.suffixes))
        )

    def match_any(self, values: Iterable[str]) -> bool:
        return any(self.match(value) for value in values)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class SourceUnreadable(Exception):
    """A rule has an IP condition and the request's source address cannot be parsed: fail closed."""


def _parse_source(text: str) -> Address | None:
    """The source address Envoy reported, or None when it is not one address.

    IPv4-mapped IPv6 (``::ffff:127.0.0.1``) is the IPv4 address it carries, so a block on
    ``127.0.0.0/8`` holds for both spellings. A zone (``fe80::1%eth0``), a port, a name or an
    empty string is not an address.
    """
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


class Context:
    """What one evaluation looks at: the request under one reading (``method``, ``path``) and the
    caller. The source address is parsed at most once, when a rule needs it."""

    __slots__ = ("_parsed", "_source", "identity", "method", "path", "request")

    def __init__(
        self,
        request: request_model.HttpRequest,
        identity: identity_model.Identity,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.request = request
        self.identity = identity
        self.method = request.method if method is None else method
        self.path = request.path if path is None else path
        self._parsed = False
        self._source: Address | None = None

    def reading(self, method: str, path: str) -> Context:
        """The same request and caller under another reading."""
        other = Context(self.request, self.identity, method, path)
        other._parsed, other._source = self._parsed, self._source
        return other

    @property
    def source(self) -> Address:
        """The parsed source address; :class:`SourceUnreadable` if there is none (never a guess)."""
        if not self._parsed:
            self._parsed = True
            self._source = _parse_source(self.request.source_ip)
        if self._source is None:
            raise SourceUnreadable(self.request.source_ip)
        return self._source


Check = Callable[[Context], bool]


@dataclasses.dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    checks: tuple[Check, ...]
    verdict: Verdict  # what a match decides (allow or deny, policy, rule): built once, returned as is
    methods: frozenset[str] | None = None  # None: any method; matched by the host's method index
    labels: tuple[str, ...] = ()  # per check, the condition as written (``to.paths [/a, /b/*]``): for explain

    def matches(self, context: Context) -> bool:
        # A plain loop, not all(<generator>): this runs for every rule of every request.
        for check in self.checks:  # noqa: SIM110
            if not check(context):
                return False
        return True


RulePair = tuple[tuple[CompiledRule, ...], tuple[CompiledRule, ...]]  # (Deny rules, Allow rules)


@dataclasses.dataclass(frozen=True, slots=True)
class HostPolicies:
    """Everything that applies to one host: Deny rules, then Allow rules, then the default.

    Rules are pre-sorted by HTTP method: ``by_method[m]`` holds the rules whose ``to.methods``
    admit ``m``, ``other`` those for a method no rule names; so a rule's method never needs
    checking at request time, and rules for other methods are never looked at.
    """

    by_method: dict[str, RulePair]
    other: RulePair
    default_verdict: Verdict  # default_allow or default_deny, naming the policy that set it
    enforced: bool  # False: only DryRun policies cover this host
    policies: tuple[str, ...]
    rules: tuple[CompiledRule, ...]  # every rule, in policy order (for explain; decisions use the index)
    dry_run: HostPolicies | None  # the outcome if the DryRun policies were enforced too
    providers: frozenset[str] | None  # identity providers in scope (None: all)


@dataclasses.dataclass(frozen=True, slots=True)
class Conflict:
    host: str
    message: str
    policies: tuple[str, ...] = ()  # the policies involved, "namespace/name"


class PolicyIndex:
    """Host → :class:`HostPolicies`. Exact hosts first, then ``*.suffix`` wildcards, then ``*``."""

    def __init__(
        self,
        exact: dict[str, HostPolicies],
        wildcards: dict[str, list[model.AccessPolicy]],
        star: list[model.AccessPolicy],
        rules: dict[str, tuple[CompiledRule, ...]],
    ) -> None:
        self._exact = exact
        self._wildcards = wildcards
        self._star = star
        self._rules = rules
        # Keyed by which wildcard entries matched, a set bounded by the configuration; the
        # attacker-controlled host name itself is never a key.
        self._merged: dict[tuple[str, ...], HostPolicies | None] = {}

    def lookup(self, host: str) -> HostPolicies | None:
        found = self._exact.get(host)
        if found is not None:
            return found
        keys = tuple(self._wildcard_keys(host))
        if keys in self._merged:
            return self._merged[keys]
        policies = [p for key in keys for p in self._wildcards[key]] + self._star
        merged = _merge(policies, self._rules) if policies else None
        self._merged[keys] = merged
        return merged

    def _wildcard_keys(self, host: str) -> Iterable[str]:
        dot = host.find(".")
        while dot != -1:
            suffix = host[dot:]
            if suffix in self._wildcards:
                yield suffix
            dot = host.find(".", dot + 1)


def compile_policies(policies: Sequence[model.AccessPolicy]) -> tuple[PolicyIndex, list[Conflict]]:
    """Compile policies into an index; also return the conflicts ``policy check`` reports."""
    ordered = sorted(policies, key=lambda p: (p.ref.namespace, p.ref.name))
    rules = {str(p.ref): tuple(_compile_rule(str(p.ref), r) for r in p.rules) for p in ordered}
    exact: dict[str, list[model.AccessPolicy]] = {}
    wildcards: dict[str, list[model.AccessPolicy]] = {}
    star: list[model.AccessPolicy] = []
    for policy in ordered:
        for host in dict.fromkeys(policy.hosts):
            if host == "*":
                star.append(policy)
            elif host.startswith("*."):
                wildcards.setdefault(host[1:], []).append(policy)
            else:
                exact.setdefault(host, []).append(policy)

    index_exact: dict[str, HostPolicies] = {}
    conflicts: list[Conflict] = []
    for host, own in exact.items():
        matching = [*own]
        dot = host.find(".")
        while dot != -1:
            matching.extend(wildcards.get(host[dot:], []))
            dot = host.find(".", dot + 1)
        matching.extend(star)
        matching.sort(key=lambda p: (p.ref.namespace, p.ref.name))
        index_exact[host] = _merge(matching, rules)
        conflicts.extend(_conflicts(host, matching))
    for suffix, own in sorted(wildcards.items()):
        conflicts.extend(_conflicts("*" + suffix, sorted([*own, *star], key=lambda p: str(p.ref))))
    return PolicyIndex(index_exact, wildcards, star, rules), conflicts


def _merge(policies: list[model.AccessPolicy], rules: dict[str, tuple[CompiledRule, ...]]) -> HostPolicies:
    policies = sorted(dict.fromkeys(policies), key=lambda p: (p.ref.namespace, p.ref.name))
    enforce = [p for p in policies if p.mode is model.Mode.ENFORCE]
    dry = [p for p in policies if p.mode is model.Mode.DRY_RUN]
    merged = _combine(enforce, rules, enforced=bool(enforce))
    if dry:
        merged = dataclasses.replace(merged, dry_run=_combine(enforce + dry, rules, enforced=True))
    return merged


def _combine(
    policies: list[model.AccessPolicy], rules: dict[str, tuple[CompiledRule, ...]], *, enforced: bool
) -> HostPolicies:
    compiled = [rule for p in policies for rule in rules[str(p.ref)]]
    named = sorted({m for rule in compiled if rule.methods is not None for m in rule.methods})

    def for_method(method: str | None) -> RulePair:
        admitted = [r for r in compiled if r.methods is None or (method is not None and method in r.methods)]
        return tuple(r for r in admitted if not r.verdict.allowed), tuple(r for r in admitted if r.verdict.allowed)

    deniers = [p for p in policies if p.default_action is model.Action.DENY]
    # Fixed order, as in Istio: any Deny rule, then any Allow rule, then the default. A host's
    # default is Deny as soon as one applicable policy says Deny (the safe side of a conflict).
    default_allow = not deniers
    default_policy = str((deniers or policies)[0].ref) if policies else ""
    providers = _provider_scope(policies)
    return HostPolicies(
        by_method={method: for_method(method) for method in named},
        other=for_method(None),
        default_verdict=Verdict(
            allowed=default_allow, reason="default_allow" if default_allow else "default_deny", policy=default_policy
        ),
        enforced=enforced,
        policies=tuple(str(p.ref) for p in policies),
        rules=tuple(compiled),
        dry_run=None,
        providers=providers,
    )


def _provider_scope(policies: Sequence[model.AccessPolicy]) -> frozenset[str] | None:
    """The identity providers accepted on a host all these policies cover: the narrowest holds.

    Every policy that names ``identity.providers`` constrains the host, so the scope is the
    intersection of the lists given (a policy without a list adds no constraint; None: no policy
    names one, every provider counts). A broader ``*.example.com`` policy can never widen what a
    host's own policy accepts.
    """
    scope: frozenset[str] | None = None
    for policy in policies:
        if policy.providers is not None:
            named = frozenset(policy.providers)
            scope = named if scope is None else scope & named
    return scope


def _conflicts(host: str, policies: list[model.AccessPolicy]) -> list[Conflict]:
    found = []
    enforce = [p for p in policies if p.mode is model.Mode.ENFORCE and p.default_action_set]
    actions = {p.default_action for p in enforce}
    if len(actions) > 1:
        names = ", ".join(f"{p.ref}={p.default_action}" for p in enforce)
        refs = tuple(str(p.ref) for p in enforce)
        found.append(Conflict(host, f"policies disagree on defaultAction ({names}); Deny applies", refs))
    scoped = [p for p in policies if p.mode is model.Mode.ENFORCE and p.providers is not None]
    if len(scoped) > 1 and not _provider_scope(scoped):
        names = ", ".join(f"{p.ref}={list(p.providers or ())}" for p in scoped)
        refs = tuple(str(p.ref) for p in scoped)
        message = f"identity.providers lists share no provider ({names}); no credential is accepted"
        found.append(Conflict(host, message, refs))
    return found


def _compile_rule(policy: str, rule: model.Rule) -> CompiledRule:
    """Turn one rule into a tuple of checks, cheapest first, so most non-matches exit early."""
    checks: list[tuple[str, Check]] = []
    methods = frozenset(rule.methods) if rule.methods and "*" not in rule.methods else None
    if rule.not_methods:
        not_methods = frozenset(rule.not_methods)
        label = _label("to.notMethods", rule.not_methods)
        if "*" in not_methods:
            checks.append((label, lambda c: False))  # every method is excluded: the rule never matches
        else:
            checks.append((label, lambda c: c.method not in not_methods))
    if rule.paths:
        paths = Patterns(rule.paths)
        checks.append((_label("to.paths", rule.paths), lambda c: paths.match(c.path)))
    if rule.not_paths:
        not_paths = Patterns(rule.not_paths)
        checks.append((_label("to.notPaths", rule.not_paths), lambda c: not not_paths.match(c.path)))
    if rule.authenticated is not None:
        wanted = rule.authenticated
        label = f"from.authenticated {'true' if wanted else 'false'}"
        checks.append((label, lambda c: c.identity.authenticated is wanted))
    if rule.subjects:
        subjects = Patterns(rule.subjects)
        label = _label("from.subjects", rule.subjects)
        checks.append((label, lambda c: c.identity.authenticated and subjects.match(c.identity.subject)))
    if rule.groups:
        groups = Patterns(rule.groups)
        checks.append((_label("from.groups", rule.groups), lambda c: groups.match_any(c.identity.groups)))
    if rule.roles:
        roles = Patterns(rule.roles)
        checks.append((_label("from.roles", rule.roles), lambda c: roles.match_any(c.identity.roles)))
    if rule.principals:
        principals = Patterns(rule.principals)
        label = _label("from.principals", rule.principals)
        checks.append((label, lambda c: bool(c.identity.principal) and principals.match(c.identity.principal)))
    # An unparseable source address raises SourceUnreadable from c.source: the evaluator turns that
    # into a deny of its own (source_address_invalid), whether the rule allows or denies.
    if rule.ip_blocks:
        blocks = rule.ip_blocks
        label = _label("from.ipBlocks", [str(b) for b in blocks])
        checks.append((label, lambda c: any(c.source in b for b in blocks)))
    if rule.not_ip_blocks:
        not_blocks = rule.not_ip_blocks
        label = _label("from.notIpBlocks", [str(b) for b in not_blocks])
        checks.append((label, lambda c: not any(c.source in b for b in not_blocks)))
    allow = rule.action is model.Action.ALLOW
    for index, condition in enumerate(rule.when):
        checks.append((_condition_label(index, condition), _compile_condition(condition, every_copy=allow)))
    verdict = Verdict(allowed=allow, reason="rule_allow" if allow else "rule_deny", policy=policy, rule=rule.name)
    return CompiledRule(
        name=rule.name,
        checks=tuple(check for _, check in checks),
        verdict=verdict,
        methods=methods,
        labels=tuple(label for label, _ in checks),
    )


def _label(field: str, values: Iterable[str]) -> str:
    return f"{field} [{', '.join(values)}]"


def _condition_label(index: int, condition: model.Condition) -> str:
    subject = f"header {condition.header}" if condition.header is not None else f"claim {condition.claim}"
    parts = [f"when[{index}] {subject}"]
    if condition.values:
        parts.append(_label("values", condition.values))
    if condition.not_values:
        parts.append(_label("notValues", condition.not_values))
    return " ".join(parts)


def _compile_condition(condition: model.Condition, *, every_copy: bool) -> Check:
    """One ``when`` condition. ``every_copy``: the rule allows, so a header sent several times must
    satisfy the condition in every copy; in a Deny rule one copy is enough. Envoy joins repeated
    headers with commas for the check but forwards every copy, and the upstream may read any of them."""
    values = Patterns(condition.values) if condition.values else None
    not_values = Patterns(condition.not_values) if condition.not_values else None

    def judge(found: tuple[str, ...]) -> bool:
        if values is not None and not values.match_any(found):
            return False
        return not (not_values is not None and not_values.match_any(found))

    if condition.header is not None:
        header = condition.header

        def header_check(c: Context) -> bool:
            value = c.request.headers.get(header)  # one lookup in the request's header map
            if value is None:
                return judge(())
            if "," not in value:
                return judge((value.strip(" \t"),))  # HTTP parsers drop the spaces around a value
            copies = _header_copies(value)
            if every_copy:
                return all(judge((copy,)) for copy in copies)
            return any(judge((copy,)) for copy in copies)

        return header_check
    claim = condition.claim or ""
    if claim == "mfa":
        # "mfa" is derived by the identity stage from amr/acr; it is not a raw token claim.
        return lambda c: judge(("true",) if c.identity.mfa else ("false",))
    return lambda c: judge(identity_model.claim_values(c.identity.claims, claim))


def _header_copies(value: str) -> tuple[str, ...]:
    """The copies of a header Envoy joined with commas (RFC 9110 §5.3): each trimmed; empty list
    elements are ignored unless every one is empty."""
    copies = tuple(item.strip(" \t") for item in value.split(","))
    return tuple(copy for copy in copies if copy) or ("",)
