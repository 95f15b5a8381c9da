"""One structlog configuration per process: JSON lines off a terminal, readable lines on one.

Every line, ours and the libraries' (aiosmtpd, uvicorn, nats-py log through stdlib logging), goes
through `scrub`: values under secret-looking keys are replaced, tokens and credentials inside
text are masked, every IP address is truncated to its network (/24, /48) and every field is cut
to a bounded length, so that no line holds a secret, a client's full address or a request body.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

import structlog

MAX_FIELD: Final = 1024  # characters of one field's value
MAX_TRACEBACK: Final = 4096  # characters of a formatted exception
MAX_ITEMS: Final = 20  # items of a list or mapping value
REDACTED: Final = "[redacted]"

# Keys whose values are never written, whatever they hold.
_SECRET_KEY: Final = re.compile(
    r"(^|_)(secret|password|passwd|token|authorization|auth|cookie|credentials?|api_?key|"
    r"body|content|payload)(_|$)",
    re.IGNORECASE,
)
_SECRETS_IN_TEXT: Final = (
    # API tokens (`mf_<org>_<random>`) and bearer credentials.
    (re.compile(r"\bmf_[A-Za-z0-9_-]{8,}"), "mf_" + REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    # `"secret": "..."`, `password=...` inside text (a JSON body in an error, a URL, a repr).
    (
        re.compile(
            r"""(?i)(["']?(?:secret|password|passwd|token|authorization|api_?key)["']?\s*[:=]\s*)"""
            r"""("(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^\s,;&}]+)"""
        ),
        r"\1" + '"' + REDACTED + '"',
    ),
    # Credentials in URLs: scheme://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1" + REDACTED + "@"),
)
_IPV4: Final = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w])")
_IPV6: Final = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def _mask_v4(match: re.Match[str]) -> str:
    if all(int(part) <= 255 for part in match.groups()):
        return f"{match[1]}.{match[2]}.{match[3]}.x"
    return match[0]


def _mask_v6(match: re.Match[str]) -> str:
    text = match[0]
    if "::" not in text and text.count(":") != 7:
        return text  # a time of day or a ratio, not an address
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return text
    network = ipaddress.IPv6Network((address, 48), strict=False).network_address
    return f"{network.compressed.rstrip(':')}::x"


def scrub_text(text: str, limit: int = MAX_FIELD) -> str:
    """Text safe to log: secrets masked, IP addresses truncated, at most `limit` characters."""
    if len(text) > limit * 4:
        text = text[: limit * 4]  # masking first would scan megabytes for nothing
    for pattern, replacement in _SECRETS_IN_TEXT:
        text = pattern.sub(replacement, text)
    text = _IPV4.sub(_mask_v4, text)
    if ":" in text:
        text = _IPV6.sub(_mask_v6, text)
    if len(text) > limit:
        text = f"{text[:limit]}...[{len(text) - limit} more characters]"
    return text


def scrub_value(value: object, depth: int = 0) -> object:
    """A log field's value made safe: strings scrubbed, containers bounded, the rest as text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if depth < 3 and isinstance(value, Mapping):
        items = list(value.items())
        out: dict[str, object] = {}
        for key, item in items[:MAX_ITEMS]:
            name = str(key)
            out[scrub_text(name, 64)] = (
                REDACTED if _SECRET_KEY.search(name) else scrub_value(item, depth + 1)
            )
        if len(items) > MAX_ITEMS:
            out["..."] = f"{len(items) - MAX_ITEMS} more"
        return out
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        kept: list[object] = [scrub_value(v, depth + 1) for v in seq[:MAX_ITEMS]]
        if len(seq) > MAX_ITEMS:
            kept.append(f"... {len(seq) - MAX_ITEMS} more")
        return kept
    return scrub_text(repr(value) if not isinstance(value, BaseException) else str(value))


def scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no secret, no full IP address, no unbounded field in any line."""
    for key in list(event_dict):
        value = event_dict[key]
        if key in ("exc_info", "_record", "_from_structlog"):
            continue
        if key in ("exception", "stack"):
            event_dict[key] = scrub_text(str(value), MAX_TRACEBACK)
        elif key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = scrub_value(value)
    return event_dict


def configure_logging(service: str, *, level: str = "info", json: bool | None = None) -> None:
    """Configure structlog (and stdlib logging through it) for one service process."""
    as_json = (not sys.stderr.isatty()) if json is None else json
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        scrub,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    worker = os.environ.get("MAILFOLD_WORKER", "")
    if worker.isdigit():  # one of the processes of `mailfold serve --workers N`
        structlog.contextvars.bind_contextvars(worker=int(worker), pid=os.getpid())
    # Libraries log through stdlib logging; keep their warnings, in the same stream and format,
    # through the same scrubbing (aiosmtpd writes the client's address into its messages).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
