"""`mailfold dsn parse <files>`: what the bounce parser reads in each file, one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from mailfold.bounces import parse


def dsn_parse_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print one JSON line per recipient of each file; 1 when a file could not be read.

    Fields: file, recipient, action, status, reply_code, reason, hard, diagnostic, feedback_type.
    A file in which the parser finds no recipient prints nothing and is reported on stderr.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    failed = False
    for name in args.files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            print(f"error: {name}: {exc.strerror or exc}", file=err)
            failed = True
            continue
        report = parse(raw)
        if not report.recipients:
            print(f"{name}: no recipient found (format {report.format})", file=err)
            continue
        for entry in report.recipients:
            line = {
                "file": name,
                "recipient": entry.recipient,
                "action": entry.action,
                "status": entry.status,
                "reply_code": entry.reply_code,
                "reason": entry.reason,
                "hard": entry.hard,
                "diagnostic": entry.diagnostic,
                "feedback_type": entry.feedback_type,
            }
            print(json.dumps(line, ensure_ascii=False), file=out)
    return 1 if failed else 0
