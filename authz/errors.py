"""Errors Tollgate reports to the people who write its configuration.

Hierarchy::

    TollgateError
    └── ConfigError          a configuration document is invalid (file, document, field named)
        └── ConfigErrors     several ConfigErrors found in one load, reported together

Request-time failures are never exceptions that leave the decision path: they become deny
decisions with a reason code (see :mod:`authz.decision`).
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConfigErrors", "TollgateError"]


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
    """Every error found in one configuration load."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(f"{len(errors)} configuration error(s)")
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)
