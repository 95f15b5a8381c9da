"""Fuzzing the running stack: every HTTP operation from its OpenAPI document, and the SMTP door.

The seed is printed (and can be set with MAILFOLD_FUZZ_SEED) so that a failure replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.polling import eventually

from mailfold.events import DLQ_STREAM, STREAM, decode
from mailfold.runtime import bus

pytestmark = pytest.mark.timeout(600)

SEED = int(os.environ.get("MAILFOLD_FUZZ_SEED") or random.randrange(2**32))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 60, GenerationMode.NEGATIVE: 40}


@pytest.fixture(scope="module")
def fuzz_org(stack: Any) -> tuple[str, str]:
    """An org of its own, so that fuzzed settings never reach the other tests' org."""
    created = stack.cli("org", "create", "fuzz")
    return "fuzz", created.stdout.strip()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("api", ["ingest", "query", "webhooks"])
def test_every_operation_answers_without_a_server_error_and_as_documented(
    stack: Any, fuzz_org: tuple[str, str], api: str, mode: GenerationMode
) -> None:
    print(f"schemathesis seed {SEED} (replay with MAILFOLD_FUZZ_SEED={SEED})")
    base = str(stack.runtime[f"{api}_url"])
    org, token = fuzz_org
    document = httpx.get(f"{base}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert operations
    for operation in operations:
        with _endpoint(base, org, token, operation.path) as endpoint:
            path_parameters = {"org": org, **endpoint}
            strategy = operation.as_strategy(mode, path_parameters=path_parameters)
            statuses = _fuzz(strategy, base, token, EXAMPLES[mode])
        print(operation.label, sorted(set(statuses)))


@contextlib.contextmanager
def _endpoint(base: str, org: str, token: str, path: str) -> Iterator[dict[str, str]]:
    """For an operation on one webhook endpoint, a real one (loopback http, as the dev stack
    allows), so that the fuzzed requests reach past the 404; removed afterwards."""
    if "{endpoint_id}" not in path:
        yield {}
        return
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(
        f"{base}/v1/orgs/{org}/webhooks",
        json={"url": "http://127.0.0.1:9/fuzz", "description": "fuzz"},
        headers=auth,
        timeout=30,
    )
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["id"]
    try:
        yield {"endpoint_id": endpoint_id}
    finally:
        httpx.delete(f"{base}/v1/orgs/{org}/webhooks/{endpoint_id}", headers=auth, timeout=30)


def _fuzz(strategy: Any, base: str, token: str, examples: int) -> list[int]:
    """Call the operation with every generated case and check each answer; the statuses seen."""
    statuses: list[int] = []

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call_and_validate(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            checks=CHECKS,
            timeout=30,
        )
        statuses.append(response.status_code)

    run()
    return statuses


def test_stateful_sequences_follow_the_documents_links_without_a_server_error(
    stack: Any, fuzz_org: tuple[str, str]
) -> None:
    print(f"schemathesis stateful seed {SEED} (replay with MAILFOLD_FUZZ_SEED={SEED})")
    org, token = fuzz_org
    base = str(stack.ingest)
    schema = schemathesis.openapi.from_dict(httpx.get(f"{base}/openapi.json", timeout=30).json())

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            case.path_parameters = {**(case.path_parameters or {}), "org": org}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "headers": {"Authorization": f"Bearer {token}"}}

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    seed(SEED)(Machine).run(
        settings=settings(
            max_examples=15,
            stateful_step_count=5,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --- SMTP ------------------------------------------------------------------------------------

FUZZ_RCPT = "in+fuzz@fuzz.example"
REPLY = re.compile(rb"^[2-5][0-9][0-9][ -]")
HEADER_NAMES = st.sampled_from(
    [b"From", b"To", b"Cc", b"Subject", b"Date", b"Content-Type", b"Content-Transfer-Encoding",
     b"MIME-Version", b"Reply-To", b"X-Fuzz", b"Received", b"Bcc", b"In-Reply-To"]
)  # fmt: skip
ODD_BYTES = st.binary(max_size=200) | st.sampled_from(
    [b"\x00", b"\r", b"\n", b"\xff\xfe", "caf\u00e9".encode(), b"=?utf-8?q?=00?=", b"\x00\r\x00"]
)
MIME = st.sampled_from(
    [
        b"",
        b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n',
        b"Content-Type: multipart/mixed\r\n\r\n--\r\n--\r\n",
        b"Content-Type: text/plain; charset=bogus-8\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
        b"Content-Type: message/rfc822\r\n\r\nFrom: \x00\r\n\r\nnested\r\n",
    ]
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A message: fuzzed headers (NUL, bare CR/LF, 8-bit), a MIME skeleton, a body, maybe huge."""
    headers = b"".join(
        draw(HEADER_NAMES) + b": " + draw(ODD_BYTES) + b"\r\n"
        for _ in range(draw(st.integers(0, 6)))
    )
    body = draw(ODD_BYTES) + b"\r\n" + draw(st.binary(max_size=2000))
    if draw(st.integers(0, 9)) == 0:
        body += b"x" * draw(st.integers(100_000, 2_000_000)) + b"\r\n"
    mime = draw(MIME)
    unique = f"Message-ID: <{uuid.uuid4().hex}@fuzz.example>\r\n".encode()
    return unique + headers + mime + b"\r\n" + body


def _stuffed(raw: bytes) -> bytes:
    """The DATA payload: dot-stuffed on every line break SMTP servers might see, then ended."""
    lines = raw.split(b"\n")
    return b"\n".join(b"." + line if line.startswith(b".") else line for line in lines) + (
        b"\r\n.\r\n"
    )


Action = tuple[str, bytes]
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.binary(max_size=600).map(lambda b: b.replace(b"\n", b""))),
        st.tuples(st.just("line"), st.sampled_from([b"EHLO fuzz", b"HELO x", b"RSET", b"NOOP"])),
        st.tuples(st.just("message"), messages()),
    ),
    min_size=1,
    max_size=4,
)


class Session:
    """A raw SMTP client that checks every reply is well-formed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.file = self.sock.makefile("rb")

    def reply(self) -> int | None:
        """The reply's code (None once the server closed); every line must be well-formed."""
        while True:
            line = self.file.readline()
            if not line:
                return None
            assert REPLY.match(line), line[:100]
            assert line.endswith(b"\r\n"), line[:100]
            if line[3:4] == b" ":
                return int(line[:3])

    def send(self, data: bytes) -> int | None:
        try:
            self.sock.sendall(data)
        except OSError:
            return None
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.file.close()
        self.sock.close()


def run_session(port: int, actions: list[Action]) -> int:
    """Play the actions; returns how many messages were answered 250."""
    accepted = 0
    session = Session(port)
    try:
        assert session.reply() == 220
        for kind, data in actions:
            if kind == "line":
                if data.strip().upper().startswith((b"QUIT", b"DATA", b"BDAT")):
                    continue  # QUIT ends the session; a bare DATA would swallow what follows
                if session.send(data + b"\r\n") is None:
                    return accepted
                continue
            if session.send(b"EHLO fuzz.example\r\n") != 250:
                return accepted
            if session.send(b"MAIL FROM:<sender@customer.example>\r\n") != 250:
                return accepted
            if session.send(f"RCPT TO:<{FUZZ_RCPT}>\r\n".encode()) != 250:
                return accepted
            if session.send(b"DATA\r\n") != 354:
                return accepted
            code = session.send(_stuffed(data))
            if code is None:
                return accepted
            if code == 250:
                accepted += 1
        return accepted
    finally:
        session.close()


async def _received_ids(nats_url: str) -> tuple[list[str], int]:
    """The email ids of the fuzz org's EmailReceived events, and the DLQ's message count."""
    nc = await bus.connect(nats_url, "e2e-fuzz", reconnect=False)
    try:
        js = nc.jetstream()
        ids: list[str] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(
                    STREAM, seq=seq, subject="mail.events.fuzz.email_received", next=True
                )
            except NotFoundError:
                break
            event = decode(msg.data or b"")
            ids.append(event.email_id)
            seq = (msg.seq or seq) + 1
        dead = (await js.stream_info(DLQ_STREAM)).state.messages
        return ids, dead
    finally:
        await bus.close(nc)


async def test_every_smtp_session_gets_well_formed_replies_and_every_250_is_projected(
    stack: Any, fuzz_org: tuple[str, str]
) -> None:
    print(f"SMTP fuzz seed {SEED} (replay with MAILFOLD_FUZZ_SEED={SEED})")
    _, token = fuzz_org
    before, dead_before = await _received_ids(stack.nats_url)
    accepted = 0

    @seed(SEED)
    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(actions=ACTIONS)
    def fuzz(actions: list[Action]) -> None:
        nonlocal accepted
        accepted += run_session(stack.smtp_port, actions)

    await asyncio.to_thread(fuzz)
    print(f"{accepted} fuzzed messages answered 250")
    assert accepted > 0

    async def all_published() -> list[str] | None:
        ids, _ = await _received_ids(stack.nats_url)
        new = ids[len(before) :]
        return new if len(new) >= accepted else None

    new = await eventually(all_published, timeout=120.0, interval=0.5)
    assert len(set(new)) == accepted  # one event per accepted message, none lost

    async with httpx.AsyncClient(
        base_url=stack.query, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:

        async def projected() -> bool:
            for email_id in new:
                if (await client.get(f"/v1/orgs/fuzz/emails/{email_id}")).status_code != 200:
                    return False
            return True

        assert await eventually(projected, timeout=120.0, interval=0.5)
    _, dead_after = await _received_ids(stack.nats_url)
    assert dead_after == dead_before, "the projector dead-lettered fuzzed mail"
