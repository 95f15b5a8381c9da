"""The record page: a CRM record's Emails related list for people, served by the query API.

Server-rendered HTML (Jinja2, every value escaped) with one stylesheet served from here: no
script, no third-party request (the Content-Security-Policy allows nothing but this origin).
Signing in stores the org's token in a session cookie (no expiry: gone when the browser closes;
HttpOnly, SameSite=Strict, scoped to the org's /ui path); every request checks it again, so a
rotated token signs the page out. The token never appears in a URL.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from mailfold.projector.adapters.queries import ProjectionQueries
from mailfold.projector.domain.cursor import InvalidCursor, decode_cursor, encode_cursor
from mailfold.projector.service_layer import views
from mailfold.runtime.orgs import TokenVerifier, valid_org_id

COOKIE: Final = "mailfold_session"
PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
STATUSES: Final = frozenset({"Sent", "Delivered", "Bounced", "Opened", "Clicked", "Received"})
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer, browsers send "Origin: null" on the sign-in
    # form, and the origin check below would refuse it.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_ASSETS = resources.files("mailfold.projector") / "entrypoints" / "ui_assets"
_ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("mailfold.projector", "entrypoints/ui_templates"),
    autoescape=True,  # every value, in text and in attributes
    undefined=jinja2.StrictUndefined,
)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


_ENV.filters["when"] = _when
_ENV.filters["iso"] = lambda v: "" if v is None else v.isoformat()


def _org_path(org_id: str) -> str:
    return f"/ui/orgs/{quote(org_id, safe='')}/"


def record_path(org_id: str, record_id: str, **params: str) -> str:
    """The record page's address (query parameters left out when empty)."""
    path = f"{_org_path(org_id)}records/{quote(record_id, safe='')}"
    query = {k: v for k, v in params.items() if v}
    return f"{path}?{urlencode(query)}" if query else path


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)


def _badge(status: str | None) -> str:
    return status.lower() if status in STATUSES else "none"


def _entry(item: dict[str, Any], row: Any) -> dict[str, Any]:
    bounce = item["bounce"]
    reason = ""
    if bounce is not None:
        kind = bounce["kind"] or ""
        reason = f"{bounce['reason'] or 'no reason given'} ({kind})" if kind else bounce["reason"]
    return {
        **item,
        "badge": _badge(item["status"]),
        "direction": "Incoming" if item["direction"] == "incoming" else "Outgoing",
        "bounce_reason": reason or "",
        "crm": bool(row["crm_originated"]),
    }


class RecordPage:
    """Routes of the record page: sign in, sign out, the page, its stylesheet."""

    def __init__(self, queries: ProjectionQueries, verifier: TokenVerifier) -> None:
        self._queries = queries
        self._verifier = verifier

    async def _signed_in(self, request: Request, org_id: str) -> bool:
        token = request.cookies.get(COOKIE)
        return bool(token) and await self._verifier.verify(org_id, token or "")

    def _sign_in_form(self, org_id: str, next_path: str, error: str = "") -> HTMLResponse:
        body = _ENV.get_template("sign_in.html").render(
            org_id=org_id,
            action=_org_path(org_id) + "session",
            next_path=next_path,
            error=error,
        )
        return _html(body, 401)

    async def record(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        record_id = request.path_params["record_id"]
        # Record ids are the CRM's own text: any printable id is looked up (and escaped).
        if not valid_org_id(org_id) or not (0 < len(record_id) <= 200 and record_id.isprintable()):
            return _html(_ENV.get_template("not_found.html").render(), 404)
        if not await self._signed_in(request, org_id):
            return self._sign_in_form(org_id, record_path(org_id, record_id))
        params = request.query_params
        filter_ = "crm" if params.get("filter") == "crm" else "all"
        limit = PAGE_SIZE
        try:
            limit = min(max(int(params.get("limit", PAGE_SIZE)), 1), MAX_PAGE_SIZE)
        except ValueError:
            limit = PAGE_SIZE
        cursor = params.get("cursor", "")
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor)
            except InvalidCursor:
                cursor = ""
        rows = await self._queries.record_emails(
            org_id, record_id, crm_only=filter_ == "crm", after=after, limit=limit + 1
        )
        page = rows[:limit]
        older = ""
        if len(rows) > limit:
            older = encode_cursor(page[-1]["email_at"], page[-1]["email_id"])
        keep = {"filter": filter_ if filter_ != "all" else "", "limit": params.get("limit", "")}
        items = []
        for row in page:
            entry = _entry(views.list_item(row), row)
            entry["href"] = (
                record_path(org_id, record_id, **keep, cursor=cursor, email=row["email_id"])
                + "#history"
            )
            items.append(entry)
        selected = await self._history(org_id, params.get("email", ""))
        body = _ENV.get_template("record.html").render(
            org_id=org_id,
            record_id=record_id,
            filter=filter_,
            items=items,
            selected=selected,
            all_href=record_path(org_id, record_id, limit=keep["limit"]),
            crm_href=record_path(org_id, record_id, filter="crm", limit=keep["limit"]),
            newest_href=record_path(org_id, record_id, **keep) if cursor else "",
            older_href=record_path(org_id, record_id, **keep, cursor=older) if older else "",
            sign_out=_org_path(org_id) + "session/end",
        )
        return _html(body)

    async def _history(self, org_id: str, email_id: str) -> dict[str, Any] | None:
        if not email_id or len(email_id) > 200:
            return None
        row = await self._queries.email(email_id, org_id)
        if row is None:
            return None
        history = [views.history_entry(h) for h in await self._queries.history(email_id, org_id)]
        item = _entry(views.list_item(row), row)
        return {"email": item, "violations": row["violation_count"], "history": history}

    async def sign_in(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        if not valid_org_id(org_id):
            return _html(_ENV.get_template("not_found.html").render(), 404)
        form = await request.form()
        token = str(form.get("token", "")).strip()
        next_path = str(form.get("next", ""))
        # Only a page of this org's UI, never another site (no open redirect).
        if not next_path.startswith(_org_path(org_id)) or "//" in next_path[1:]:
            next_path = _org_path(org_id)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return self._sign_in_form(org_id, next_path, "Sign in from this site's own page.")
        if not token or not await self._verifier.verify(org_id, token):
            return self._sign_in_form(org_id, next_path, "That token is not valid for this org.")
        response = RedirectResponse(next_path, status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            token,
            path=_org_path(org_id),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        if not valid_org_id(org_id):
            return _html(_ENV.get_template("not_found.html").render(), 404)
        response = RedirectResponse(_org_path(org_id), status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path=_org_path(org_id), httponly=True, samesite="strict")
        return response

    async def org_home(self, request: Request) -> Response:
        org_id = request.path_params["org"]
        if not valid_org_id(org_id):
            return _html(_ENV.get_template("not_found.html").render(), 404)
        if not await self._signed_in(request, org_id):
            return self._sign_in_form(org_id, _org_path(org_id))
        body = _ENV.get_template("org.html").render(
            org_id=org_id, sign_out=_org_path(org_id) + "session/end"
        )
        return _html(body)

    async def stylesheet(self, _: Request) -> Response:
        css = (_ASSETS / "app.css").read_bytes()
        headers = {**_SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
        return Response(css, media_type="text/css", headers=headers)

    def routes(self) -> list[BaseRoute]:
        """The page's routes, all under /ui."""
        return [
            Route("/ui/assets/app.css", self.stylesheet),
            Route("/ui/orgs/{org}/", self.org_home),
            Route("/ui/orgs/{org}/session", self.sign_in, methods=["POST"]),
            Route("/ui/orgs/{org}/session/end", self.sign_out, methods=["POST"]),
            Route("/ui/orgs/{org}/records/{record_id}", self.record),
        ]
