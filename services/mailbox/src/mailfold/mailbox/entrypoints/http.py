"""`DELETE /v1/orgs/{org}/emails/{email_id}`: decode, call the deletion handler, answer.

Also /healthz and /metrics. Errors are RFC 9457 problem+json naming the field at fault.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailfold.mailbox.domain.status import MailboxError
from mailfold.mailbox.service_layer.deletion import MailboxChanged, NotSynced
from mailfold.runtime.logging import get_logger
from mailfold.runtime.ops import HealthCheck, ops_routes
from mailfold.runtime.orgs import TokenVerifier, bearer, valid_org_id
from mailfold.runtime.problems import FieldError, api_app, problem

_EMAIL_ID: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_json = msgspec.json.Encoder()
log = get_logger(__name__)

Delete = Callable[[str, str], Awaitable[str]]


def mailbox_app(
    delete: Delete,
    verifier: TokenVerifier,
    health: HealthCheck,
    asyncapi: Callable[[], str],
) -> Starlette:

    async def delete_email(request: Request) -> Response:
        org_id = request.path_params["org"]
        email_id = request.path_params["email_id"]
        token = bearer(request.headers.get("authorization"))
        if not valid_org_id(org_id) or not await verifier.verify(org_id, token):
            return problem(
                401,
                "a valid bearer token for this org is required",
                [FieldError("Authorization", "missing or invalid bearer token")],
                headers={"WWW-Authenticate": 'Bearer realm="mailfold"'},
            )
        if not _EMAIL_ID.match(email_id):
            return problem(
                422,
                "the email id is malformed",
                [FieldError("email_id", "must be 1-64 characters of A-Z, a-z, 0-9 and _.:-")],
            )
        try:
            user = await delete(org_id, email_id)
        except NotSynced:
            return problem(
                404,
                "no email synced from an integrated mailbox has this id",
                [FieldError("email_id", "not a synced mailbox email (or already deleted)")],
            )
        except MailboxChanged as exc:
            return problem(409, str(exc), [FieldError("email_id", "retry after the next sync")])
        except MailboxError as exc:
            log.warning("mailbox deletion failed", email_id=email_id, kind=exc.kind.value)
            return problem(
                502,
                "the mailbox server did not delete the message",
                [FieldError("mailbox", f"{exc.kind.value}: {exc.message}")],
            )
        log.info("email deleted in its mailbox", email_id=email_id, org_id=org_id)
        deleted = {"email_id": email_id, "mailbox_user": user, "deleted": True}
        return Response(_json.encode(deleted), media_type="application/json")

    return api_app(
        [
            Route("/v1/orgs/{org}/emails/{email_id}", delete_email, methods=["DELETE"]),
            *ops_routes(health, asyncapi=asyncapi),
        ]
    )
