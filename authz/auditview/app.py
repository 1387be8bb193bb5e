"""The auditors' web application (Starlette, served by uvicorn): read-only pages over the log.

Pages: ``/`` overview, ``/search`` (filters in the URL: every search is a permalink),
``/records/{id}`` one record and ``/records/{id}/proof`` its inclusion proof,
``/integrity`` the verifier's verdict per session, ``/export`` the current filter as CSV or JSON
lines (streamed). ``/healthz`` answers probes.

Who is looking comes from the headers Tollgate injects (``x-tollgate-subject``,
``x-tollgate-groups``, ``x-tollgate-decision-id``): the page is meant to sit behind Envoy and
Tollgate, which decide who may look and write one audit record per view. A request without them is
refused, unless the server was started ``--local-only`` on a loopback address. The page writes
nothing to the log; its index lives elsewhere (:mod:`authz.audit.index`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import pathlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from http_sfv import list as sf_list
from starlette import applications, requests, responses, routing, templating
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from authz import response as identity_headers
from authz.audit import index, proof, pseudonym, query
from authz.auditview import charts, integrity

__all__ = ["Settings", "create_app", "is_loopback"]

log = logging.getLogger("tollgate.audit.ui")
_HERE = pathlib.Path(__file__).parent
RANGES = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000, "all": 0}
_MAX_PARAM = 512  # characters in one filter value
_MAX_PAGE = 10_000
_LATEST_MS = 253402300800000  # 10000-01-01: a time beyond it is a typo (and would not fit SQLite's integers)
_FILTER_NAMES = ("since", "until", "subject", "email", "decision", "host", "path_prefix", "reason", "policy")
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # filters in URLs name subjects: never sent on to a tracing UI
    (b"cache-control", b"no-store"),
]


@dataclasses.dataclass(frozen=True)
class Settings:
    directories: tuple[pathlib.Path, ...]  # the log directory, and its archive if any
    verifier_key: str
    index_path: pathlib.Path
    pseudonym_keys: pseudonym.Pseudonymizer | None = None
    trace_url: str = ""  # a URL with {trace_id}, to the user's tracing UI
    local_only: bool = False  # serve without Tollgate's identity headers (loopback only)
    refresh_seconds: float = 5.0  # how often new records are indexed
    verify_interval: float = 300.0  # at least this long between two verifications
    witness: pathlib.Path | None = None  # a witness's state directory: what it accepted must still be here
    page_size: int = 50


@dataclasses.dataclass(frozen=True)
class Viewer:
    """Who is looking, as Tollgate said (or the local user of a --local-only server)."""

    subject: str
    groups: str
    decision_id: str  # the audit record of this very view


class _State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = index.Index(settings.index_path, settings.directories)
        self.trees = proof.Trees(settings.directories)  # kept up to date beside the index: downloads only prove
        self.integrity = integrity.Integrity(
            settings.directories, settings.verifier_key, interval=settings.verify_interval, witness=settings.witness
        )
        self.indexed_once = False
        self.index_error = ""
        self.verify_error = ""


class _Identity:
    """Refuse requests without Tollgate's identity headers (``/healthz`` aside); keep the viewer."""

    def __init__(self, app: ASGIApp, *, local_only: bool) -> None:
        self.app = app
        self.local_only = local_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        subject = headers.get(identity_headers.SUBJECT, "")
        decision_id = headers.get(identity_headers.DECISION_ID, "")
        if subject and decision_id:
            viewer = Viewer(subject, _groups(headers.get(identity_headers.GROUPS, "")), decision_id)
        elif self.local_only and _loopback_host(headers.get("host", "")):
            viewer = Viewer("", "", "")
        else:
            reason = (
                "--local-only answers only requests addressed to a loopback name or address (Host), so that "
                "a web page cannot reach it through a DNS name rebound to this machine"
                if self.local_only
                else "this page is served behind Envoy and Tollgate, which identify the viewer and record every view"
            )
            page = responses.PlainTextResponse(
                f"403 Forbidden: no identity from Tollgate. {reason[0].upper()}{reason[1:]} (see docs/audit.md).\n",
                status_code=403,
            )
            await page(scope, receive, send)
            return
        scope.setdefault("state", {})["viewer"] = viewer
        await self.app(scope, receive, send)


def is_loopback(name: str) -> bool:
    """Whether a host name or address (no port) is this machine's: localhost or a loopback address."""
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine, any port."""
    return is_loopback(host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host.partition(":")[0])


def _groups(header: str) -> str:
    """The groups Tollgate sent (an RFC 9651 List of Strings), for display."""
    if not header:
        return ""
    parsed = sf_list.List()
    try:
        parsed.parse(header.encode())
    except ValueError:
        return "(unreadable groups header)"
    return ", ".join(str(item.value) for item in parsed)


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, sending)


def _iso(time_ms: int | None) -> str:
    if not time_ms:
        return "-"
    moment = datetime.datetime.fromtimestamp(time_ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def _age(time_ms: int | None) -> str:
    if not time_ms:
        return "never"
    seconds = max(0, time.time() - time_ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _filters(params: Mapping[str, str], keys: pseudonym.Pseudonymizer | None) -> tuple[query.Filters, dict[str, str]]:
    """The search filters of a request's query parameters, and the values as given (for the form
    and for links); a bad value is a 400 naming it."""
    given = {name: params.get(name, "").strip() for name in _FILTER_NAMES}
    for name, value in given.items():
        if len(value) > _MAX_PARAM:
            raise _bad(f"{name}: longer than {_MAX_PARAM} characters")
    now = time.time_ns() // 1_000_000
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        try:
            times[name] = query.parse_time(given[name], now) if given[name] else None
        except (ValueError, OverflowError):
            times[name] = -1
        moment = times[name]
        if moment is not None and not 0 <= moment < _LATEST_MS:
            raise _bad(f"{name}: {given[name]!r} is not a time (RFC 3339 in UTC, epoch ms, or an age like 2h)")
    if given["decision"] and given["decision"] not in ("allow", "deny", "error"):
        raise _bad(f"decision: {given['decision']!r} is not allow, deny or error")
    searched: dict[str, frozenset[str]] = {}
    for name in ("subject", "email"):
        value = given[name]
        if not value:
            searched[name] = frozenset()
            continue
        if keys is None and not pseudonym.is_pseudonym(value):
            raise _bad(
                f"{name}: {value!r} is not a pseudonym (32 hex digits); searching by a real {name} needs the "
                "server started with --pseudonym-keys"
            )
        found = query.subject_pseudonyms(value, keys) if keys is not None else frozenset({value})
        searched[name] = found | ({value} if pseudonym.is_pseudonym(value) else set())
    filters = query.Filters(
        since_ms=times["since"],
        until_ms=times["until"],
        subjects=searched["subject"],
        emails=searched["email"],
        decision=given["decision"] or None,
        host=given["host"] or None,
        path_prefix=given["path_prefix"] or None,
        reason=given["reason"] or None,
        policy=given["policy"] or None,
    )
    # An age ("2h") is pinned to the time it was read: pages, permalinks and exports of one search
    # then show the same records, however much later they are opened.
    for name, moment in times.items():
        if moment is not None and query.is_age(given[name]):
            given[name] = _iso(moment).replace(" ", "T")
    return filters, {name: value for name, value in given.items() if value}


def _link(path: str, **params: Any) -> str:
    kept = {name: value for name, value in params.items() if value not in (None, "")}
    return path + ("?" + urllib.parse.urlencode(kept) if kept else "")


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, value as text) for every leaf of a record, in the record's order."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(item, f"{prefix}{key}.")]
    if isinstance(value, list):
        return [(prefix.rstrip("."), ", ".join(str(item) for item in value))]
    return [(prefix.rstrip("."), str(value))]


class _Pages:
    """The endpoints, the background work, and what they share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = _State(settings)
        self.templates = templating.Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.filters["iso"] = _iso
        self.templates.env.filters["age"] = _age
        self.templates.env.globals["link"] = _link

    def page(self, request: requests.Request, name: str, status: int = 200, **context: Any) -> responses.Response:
        verdict = self.state.integrity.verdict
        return self.templates.TemplateResponse(
            request,
            name,
            {
                "viewer": request.scope["state"]["viewer"],
                "verdict": verdict,
                "verdict_age": _age(verdict.finished_ms) if verdict else "",
                "indexing": not self.state.indexed_once,
                "index_error": self.state.index_error,
                "verify_error": self.state.verify_error,
                "pseudonyms_searchable": self.settings.pseudonym_keys is not None,
                **context,
            },
            status_code=status,
        )

    def overview(self, request: requests.Request) -> responses.Response:
        chosen = request.query_params.get("range", "24h")
        if chosen not in RANGES:
            raise _bad(f"range: {chosen!r} is not one of {', '.join(RANGES)}")
        now = time.time_ns() // 1_000_000
        with self.state.index.reader() as reader:
            if chosen == "all":
                span = reader.span() or (now - RANGES["1h"], now)
                since, until = span[0], span[1] + 1
            else:
                since, until = now - RANGES[chosen], now + 1
            summary = reader.overview(since, until)
        return self.page(
            request,
            "overview.html",
            range=chosen,
            ranges=list(RANGES),
            since=since,
            until=until,
            summary=summary,
            timeline=charts.image(charts.decisions_over_time(summary)),
            reasons=charts.image(charts.denials_by_reason(summary)) if summary.reasons else "",
        )

    def search(self, request: requests.Request) -> responses.Response:
        filters, given = _filters(request.query_params, self.settings.pseudonym_keys)
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            raise _bad("page: not a number") from None
        if not 1 <= number <= _MAX_PAGE:
            raise _bad(f"page: must be from 1 to {_MAX_PAGE}")
        with self.state.index.reader() as reader:
            rows = reader.search(filters, limit=self.settings.page_size, offset=(number - 1) * self.settings.page_size)
            total = reader.count(filters)
        pages = max(1, -(-total // self.settings.page_size))
        return self.page(
            request,
            "search.html",
            given=given,
            rows=rows,
            total=total,
            number=number,
            pages=pages,
            permalink=_link("/search", **given),
            previous=_link("/search", **given, page=number - 1) if number > 1 else "",
            following=_link("/search", **given, page=number + 1) if number < pages else "",
            csv=_link("/export", **given, format="csv"),
            jsonl=_link("/export", **given, format="json"),
        )

    def _read(self, record_id: str) -> tuple[dict[str, Any], str, pathlib.Path]:
        if not record_id or len(record_id) > 64:
            raise HTTPException(404, "no such record")
        with self.state.index.reader() as reader:
            where = reader.locate(record_id)
        if where is None:
            raise HTTPException(404, f"no record with id {record_id} (new records appear within a few seconds)")
        path, offset, length = where
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                line = handle.read(length).decode()
            item = json.loads(line)
        except (OSError, ValueError):
            item = None
        if not isinstance(item, dict) or item.get("id") != record_id:
            raise HTTPException(409, f"record {record_id} changed on disk since it was indexed: see the integrity page")
        return item, line, path

    def record(self, request: requests.Request) -> responses.Response:
        record_id = request.path_params["record_id"]
        item, line, _ = self._read(record_id)
        trace_id = str(item.get("trace", {}).get("trace_id", ""))
        trace_link = self.settings.trace_url.replace("{trace_id}", urllib.parse.quote(trace_id)) if trace_id else ""
        return self.page(
            request,
            "record.html",
            item=item,
            fields=_flatten(item),
            raw=line,
            trace_id=trace_id,
            trace_link=trace_link if self.settings.trace_url else "",
        )

    def record_proof(self, request: requests.Request) -> responses.Response:
        record_id = request.path_params["record_id"]
        item, _, path = self._read(record_id)  # a 404 or 409 as for the record's page
        session = pathlib.PurePath(path.parent.parent.name, path.parent.name)  # <instance>/<session>/segment
        try:
            seq = item.get("seq")
            made = self.state.trees.prove(session, seq if isinstance(seq, int) else -1)
        except proof.ProofError as error:
            raise HTTPException(409, f"no proof yet: {error}") from None
        return responses.Response(
            json.dumps(made, indent=2) + "\n",
            media_type="application/json",
            headers={"content-disposition": f'attachment; filename="proof-{record_id}.json"'},
        )

    def integrity_page(self, request: requests.Request) -> responses.Response:
        return self.page(request, "integrity.html")

    def export(self, request: requests.Request) -> responses.Response:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "json"):
            raise _bad(f"format: {fmt!r} is not csv or json")
        kind = request.query_params.get("kind", "decision")
        if kind not in ("decision", "alert"):
            raise _bad(f"kind: {kind!r} is not decision or alert")
        filters, _ = _filters(request.query_params, self.settings.pseudonym_keys)
        filters = dataclasses.replace(filters, kinds=frozenset({kind}))

        def chunks() -> Iterator[str]:
            with self.state.index.reader() as reader:
                yield from query.stream(reader.export(filters), fmt, kind=kind)

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        extension = "csv" if fmt == "csv" else "jsonl"
        return responses.StreamingResponse(
            chunks(),
            media_type="text/csv" if fmt == "csv" else "application/jsonl",
            headers={"content-disposition": f'attachment; filename="tollgate-audit-{stamp}.{extension}"'},
        )

    def healthz(self, request: requests.Request) -> responses.Response:
        return responses.PlainTextResponse("ok\n")

    async def failed(self, request: requests.Request, error: Exception) -> responses.Response:
        status = error.status_code if isinstance(error, HTTPException) else 500
        detail = error.detail if isinstance(error, HTTPException) else "internal error (logged by the server)"
        if status == 500:
            log.error("audit ui: %s %s failed", request.method, request.url.path, exc_info=error)
        if "viewer" not in request.scope.get("state", {}):
            return responses.PlainTextResponse(f"{status}: {detail}\n", status_code=status)
        return self.page(request, "error.html", status=status, status_code=status, detail=detail)

    async def index_loop(self) -> None:
        while True:
            try:
                # The trees first: a record the index can find is then one its tree has read.
                await asyncio.to_thread(self.state.trees.refresh)
            except Exception:  # a proof download then says "not read yet"; the index goes on
                log.exception("audit ui: reading the logs for proofs failed")
            try:
                added = await asyncio.to_thread(self.state.index.refresh)
                self.state.index_error = ""
                if added:
                    log.info("audit ui: indexed %d new record(s)", added)
            except Exception as error:  # a disk error: shown on every page, tried again
                self.state.index_error = str(error)
                log.exception("audit ui: indexing failed")
            self.state.indexed_once = True
            await asyncio.sleep(self.settings.refresh_seconds)

    async def verify_loop(self) -> None:
        while True:
            try:
                await self.state.integrity.check()
                self.state.verify_error = ""
            except Exception as error:  # shown on every page; the last verdict stays until a new one
                self.state.verify_error = str(error)
                log.exception("audit ui: verification failed to run")
            await asyncio.sleep(min(self.settings.verify_interval, self.settings.refresh_seconds))


def create_app(settings: Settings) -> applications.Starlette:
    """The application; its lifespan indexes new records and verifies the log in the background."""
    pages = _Pages(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: applications.Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(pages.index_loop()), asyncio.create_task(pages.verify_loop())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            pages.state.integrity.close()

    return applications.Starlette(
        routes=[
            routing.Route("/", pages.overview),
            routing.Route("/search", pages.search),
            routing.Route("/records/{record_id}", pages.record),
            routing.Route("/records/{record_id}/proof", pages.record_proof),
            routing.Route("/integrity", pages.integrity_page),
            routing.Route("/export", pages.export),
            routing.Route("/healthz", pages.healthz),
            routing.Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ],
        middleware=[Middleware(_SecurityHeaders), Middleware(_Identity, local_only=settings.local_only)],
        exception_handlers={HTTPException: pages.failed, Exception: pages.failed},
        lifespan=lifespan,
    )
