"""`GET /v1/orgs/{org}/stats`: an org's deliverability over a time window, by source."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mailfold.events import Source
from mailfold.projector.adapters.stats import StatsQueries
from mailfold.projector.entrypoints.http import Api, json_response
from mailfold.runtime.problems import FieldError, problem

DEFAULT_WINDOW: Final = timedelta(days=30)
MAX_WINDOW: Final = timedelta(days=366)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 date-time with an offset, or a date (its midnight UTC); ValueError otherwise."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("needs a time zone offset (Z or +hh:mm)")
    return value.astimezone(UTC)


class StatsApi:
    """The stats route, authorised like every other query route."""

    def __init__(
        self, api: Api, stats: StatsQueries, now: Callable[[], datetime] | None = None
    ) -> None:
        self._api = api
        self._stats = stats
        self._now = now or (lambda: datetime.now(UTC))

    async def stats(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        refused = await self._api.authorize(request, org_id)
        if refused is not None:
            return refused
        params = request.query_params
        errors: list[FieldError] = []
        bounds: dict[str, datetime | None] = {"from": None, "to": None}
        for name in bounds:
            raw = params.get(name)
            if raw is None:
                continue
            try:
                bounds[name] = parse_instant(raw)
            except ValueError:
                errors.append(
                    FieldError(
                        name,
                        "must be an RFC 3339 date-time with an offset "
                        "(2026-03-01T00:00:00Z) or a date (2026-03-01)",
                    )
                )
        source = params.get("source")
        if source is not None and source not in {s.value for s in Source}:
            errors.append(FieldError("source", "must be a source code, e.g. individual"))
        if not errors:
            end = bounds["to"] or self._now()
            try:
                start = bounds["from"] or end - DEFAULT_WINDOW
            except OverflowError:  # a `to` in the first days of year 1: from its very start
                start = datetime.min.replace(tzinfo=UTC)
            if start >= end:
                errors.append(FieldError("from", "must be before to"))
            elif end - start > MAX_WINDOW:
                errors.append(FieldError("from", "the window may span at most 366 days"))
        if errors:
            fields = ", ".join(e.field for e in errors)
            return problem(422, f"invalid query: {fields}", errors)
        figures = await self._stats.org_stats(org_id, start, end, source)
        return json_response(
            {"org_id": org_id, "from": start, "to": end, "source": source, **figures}
        )

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/orgs/{org}/stats", self.stats)]
