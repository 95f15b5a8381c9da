"""`mailfold dsn parse <files>`: what the bounce parser reads in each file, one JSON line each."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from mailfold.bounces import ParseFailed, parse


def dsn_parse_command(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print one JSON line per recipient of each file; 1 when a file could not be read.

    Fields: file, recipient, action, status, reply_code, reason, hard, diagnostic, feedback_type.
    With `--explain`, each line also has "explain": the reader that read the file and, per field,
    the rule that decided it. A file in which the parser finds no recipient prints nothing and
    is reported on stderr; a file the parser fails on is reported with its SHA-256 (exit 1).
    """
    explain = bool(getattr(args, "explain", False))
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
        failures: list[ParseFailed] = []
        report = parse(raw, on_error=failures.append)
        if failures:
            print(f"error: {name}: {failures[0]}", file=err)
            failed = True
            continue
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
            if explain:
                line["explain"] = {"reader": report.format, **dict(entry.explanation)}
            print(json.dumps(line, ensure_ascii=False), file=out)
    return 1 if failed else 0
