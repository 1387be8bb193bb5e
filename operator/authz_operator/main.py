"""The operator's kopf registrations: decorators only, each one line into :mod:`authz_operator.handlers`.

Run it as ``tollgate operator`` (flags, docs/operations.md) or ``kopf run -m authz_operator.main``
(settings from ``TOLLGATE_*`` variables). Handler ids are ``<resource>_<event>``.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from authz_operator import build
from authz_operator.handlers import accesspolicy, common, identityprovider, secret, startup

GROUP, VERSION = "tollgate.dev", "v1alpha1"
CREDENTIALS = {build.CREDENTIALS_LABEL: "true"}
Logger = logging.Logger | logging.LoggerAdapter[Any]


@kopf.on.startup(id="operator_startup")
async def operator_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
    await startup.configure(settings, memo, logger)


@kopf.on.cleanup(id="operator_cleanup")
async def operator_cleanup(memo: kopf.Memo, **_: Any) -> None:
    await startup.cleanup(memo)


# Indices: every object in scope, as the API last showed it; handlers read all three.


@kopf.index(GROUP, VERSION, "accesspolicies", id="policies")
def policies(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return common.index_object(body)


@kopf.index(GROUP, VERSION, "identityproviders", id="providers")
def providers(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    return common.index_object(body)


@kopf.index("", "v1", "secrets", labels=CREDENTIALS, id="secrets")
def secrets(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, bytes]]:
    return common.index_secret(body)


# AccessPolicy


@kopf.on.resume(GROUP, VERSION, "accesspolicies", id="accesspolicy_resume")
@kopf.on.create(GROUP, VERSION, "accesspolicies", id="accesspolicy_create")
@kopf.on.update(GROUP, VERSION, "accesspolicies", id="accesspolicy_update")
async def accesspolicy_changed(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
    await accesspolicy.changed(memo=memo, indices=common.Indices.from_kwargs(kwargs), logger=logger)


@kopf.on.delete(GROUP, VERSION, "accesspolicies", id="accesspolicy_delete")
async def accesspolicy_delete(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
    await accesspolicy.deleted(memo=memo, indices=common.Indices.from_kwargs(kwargs), logger=logger)


@kopf.on.validate(GROUP, VERSION, "accesspolicies", id="accesspolicy_validate", ignore_failures=True)
def accesspolicy_validate(body: kopf.Body, **_: Any) -> None:
    accesspolicy.validate(body=body)


# IdentityProvider


@kopf.on.resume(GROUP, VERSION, "identityproviders", id="identityprovider_resume")
@kopf.on.create(GROUP, VERSION, "identityproviders", id="identityprovider_create")
@kopf.on.update(GROUP, VERSION, "identityproviders", id="identityprovider_update")
async def identityprovider_changed(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
    await identityprovider.changed(memo=memo, indices=common.Indices.from_kwargs(kwargs), logger=logger)


@kopf.on.delete(GROUP, VERSION, "identityproviders", id="identityprovider_delete")
async def identityprovider_delete(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
    await identityprovider.deleted(memo=memo, indices=common.Indices.from_kwargs(kwargs), logger=logger)


@kopf.on.validate(GROUP, VERSION, "identityproviders", id="identityprovider_validate", ignore_failures=True)
def identityprovider_validate(body: kopf.Body, **_: Any) -> None:
    identityprovider.validate(body=body)


# Labelled Secrets (keys and HMAC secrets providers name)


@kopf.on.event("", "v1", "secrets", labels=CREDENTIALS, id="secret_event")
async def secret_event(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
    await secret.changed(memo=memo, indices=common.Indices.from_kwargs(kwargs), logger=logger)
