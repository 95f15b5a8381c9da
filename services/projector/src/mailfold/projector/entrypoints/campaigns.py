"""The campaign routes of the query API: a bulk send's counts, and its emails page by page."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailfold.projector.adapters.campaign_queries import CampaignQueries
from mailfold.projector.entrypoints.openapi import CampaignCounts, CampaignPage
from mailfold.runtime.problems import FieldError, page_limit, problem

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500


_IDENT: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Authorize = Callable[[Request, str], Awaitable[Response | None]]
JsonResponse = Callable[[Any], Response]


def campaign_email(row: Any) -> dict[str, Any]:
    """One email of a campaign as the list shows it."""
    return {
        "email_id": row["email_id"],
        "recipient": row["to_addrs"][0] if row["to_addrs"] else None,
        "record_ids": list(row["record_ids"]),
        "status": row["status"],
        "source": row["source_display"],
        "email_at": row["email_at"],
        "sent_at": row["sent_at"],
        "delivered_at": row["delivered_at"],
        "bounced_at": row["bounced_at"],
        "opened_at": row["opened_at"],
        "clicked_at": row["clicked_at"],
        "rejected_at": row["rejected_at"],
        "opens": {"human": row["opens_human"], "machine": row["opens_machine"]},
        "clicks": {"human": row["clicks_human"], "machine": row["clicks_machine"]},
        "bounce": None
        if row["bounced_at"] is None
        else {"kind": row["bounce_kind"], "reason": row["bounce_reason"]},
        "rejection": None
        if row["rejected_at"] is None
        else {"reason": row["rejection_reason"], "detail": row["rejection_detail"]},
    }


class CampaignEndpoints:
    """`GET /v1/orgs/{org}/campaigns/{campaign_id}` and `.../emails`."""

    def __init__(
        self,
        queries: CampaignQueries,
        authorize: Authorize,
        json_response: JsonResponse,
    ) -> None:
        self._queries = queries
        self._authorize = authorize
        self._json = json_response

    def _not_found(self) -> Response:
        return problem(404, "no such campaign", [FieldError("campaign_id", "not found")])

    async def counts(self, request: Request) -> Response:
        """The campaign's counts: sent, delivered, bounced, opened, clicked, rejected."""
        org_id = request.path_params["org"]
        campaign_id = request.path_params["campaign_id"]
        refused = await self._authorize(request, org_id)
        if refused is not None:
            return refused
        if not _IDENT.match(campaign_id):
            return self._not_found()
        counts = await self._queries.counts(org_id, campaign_id)
        if counts is None:
            return self._not_found()
        return self._json(CampaignCounts(org_id=org_id, campaign_id=campaign_id, counts=counts))

    async def emails(self, request: Request) -> Response:
        """The campaign's emails, `limit` at a time; `cursor` is the last page's `next_cursor`."""
        org_id = request.path_params["org"]
        campaign_id = request.path_params["campaign_id"]
        refused = await self._authorize(request, org_id)
        if refused is not None:
            return refused
        params = request.query_params
        errors: list[FieldError] = []
        limit = page_limit(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, errors)
        after = params.get("cursor")
        if after is not None and not _IDENT.match(after):
            errors.append(FieldError("cursor", "is not a cursor this API gave"))
        if errors:
            fields = ", ".join(e.field for e in errors)
            return problem(422, f"invalid query: {fields}", errors)
        if not _IDENT.match(campaign_id):
            return self._not_found()
        rows = await self._queries.emails(org_id, campaign_id, after=after, limit=limit + 1)
        if not rows and after is None:
            return self._not_found()
        page = rows[:limit]
        return self._json(
            CampaignPage(
                org_id=org_id,
                campaign_id=campaign_id,
                items=[campaign_email(r) for r in page],
                next_cursor=page[-1]["email_id"] if len(rows) > limit else None,
            )
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/orgs/{org}/campaigns/{campaign_id}", self.counts),
            Route("/v1/orgs/{org}/campaigns/{campaign_id}/emails", self.emails),
        ]
