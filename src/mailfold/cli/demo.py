"""The demo org `mailfold dev` creates on first start."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailfold.cli.dev import DevStack

DEMO_ORG = "demo"


def seed_demo(stack: DevStack) -> list[str]:
    """Create the demo org once; its token is printed once and kept in `.data/demo-token`."""
    from mailfold.runtime import bus
    from mailfold.runtime.orgs import OrgExists, create_org

    token_file = stack.data / "demo-token"

    async def create() -> str | None:
        nc = await bus.connect(stack.nats_url, "mailfold-dev", reconnect=False)
        try:
            bucket = await bus.kv(nc.jetstream(), bus.BUCKET_ORGS)
            try:
                return await create_org(bucket, DEMO_ORG)
            except OrgExists:
                return None
        finally:
            await bus.close(nc)

    token = asyncio.run(create())
    lines = [""]
    if token is not None:
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o600)
        lines.append(f"demo org {DEMO_ORG!r} created; its API token (shown once): {token}")
    lines.append(f"  (the token is also in {token_file})")
    return lines
