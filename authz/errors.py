"""Errors Tollgate reports to the people who write its configuration.

Hierarchy::

    TollgateError
    └── ConfigError          a configuration document is invalid (file, document, field named)
        └── ConfigErrors     several ConfigErrors found in one load, reported together

Request-time failures are never exceptions that leave the decision path: they become deny
decisions with a reason code (see :mod:`authz.decision`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["ConfigError", "ConfigErrors", "Problems", "TollgateError"]

# A configuration can be wrong in many places at once; past this many, the rest are counted.
MAX_REPORTED = 100


class TollgateError(Exception):
    """Base of Tollgate's own errors."""


class ConfigError(TollgateError):
    """One invalid configuration document, located as precisely as we can."""

    def __init__(self, message: str, *, file: str = "", document: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.document = document
        self.field = field

    def located(self, *, file: str | None = None, document: str | None = None) -> ConfigError:
        """Return a copy that also names the file and document it came from."""
        return ConfigError(
            self.message,
            file=self.file or file or "",
            document=self.document or document or "",
            field=self.field,
        )

    def __str__(self) -> str:
        where = [part for part in (self.file, self.document, self.field) if part]
        return ": ".join([*where, self.message])


class ConfigErrors(ConfigError):
    """Every error found in one configuration load (shown: the first :data:`MAX_REPORTED`)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(f"{len(errors)} configuration error(s)")
        self.errors = errors

    def located(self, *, file: str | None = None, document: str | None = None) -> ConfigError:
        return ConfigErrors([error.located(file=file, document=document) for error in self.errors])

    def __str__(self) -> str:
        shown = [str(error) for error in self.errors[:MAX_REPORTED]]
        if len(self.errors) > MAX_REPORTED:
            shown.append(f"... and {len(self.errors) - MAX_REPORTED} more error(s)")
        return "\n".join(shown)


class Problems:
    """Collects the errors of independent parts of a document, so all are reported at once::

    problems = Problems()
    with problems.check():
        hosts = parse_hosts(...)     # a ConfigError here is kept, and parsing goes on
    problems.raise_any()
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ConfigErrors as found:
            self.errors.extend(found.errors)
        except ConfigError as found:
            self.errors.append(found)

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)
