"""`mailfold dsn parse`: one JSON line per recipient, problems on stderr, exit 1 on unreadable files."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from mailfold.ingest.cli import dsn_parse_command

FIXTURES = Path(__file__).parents[2] / "fixtures" / "bounces"


def run(*files: str) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    code = dsn_parse_command(argparse.Namespace(files=list(files)), out=out, err=err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, lines, err.getvalue()


def test_each_recipient_of_a_report_is_one_json_line() -> None:
    path = str(FIXTURES / "rfc3464-01.eml")
    code, lines, err = run(path)
    assert code == 0
    assert err == ""
    assert lines
    for line in lines:
        assert line["file"] == path
        assert set(line) >= {
            "recipient",
            "status",
            "reply_code",
            "reason",
            "hard",
            "diagnostic",
            "feedback_type",
        }


def test_feedback_reports_carry_their_feedback_type() -> None:
    _, lines, _ = run(str(FIXTURES / "arf-01.eml"))
    assert lines[0]["feedback_type"]


def test_an_unreadable_file_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    good = str(FIXTURES / "rfc3464-01.eml")
    code, lines, err = run(str(tmp_path / "missing.eml"), good)
    assert code == 1
    assert "missing.eml" in err
    assert lines  # the readable file is still parsed


def test_a_file_without_recipients_prints_nothing_and_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "note.eml"
    empty.write_bytes(b"Subject: hello\r\n\r\njust a note\r\n")
    code, lines, err = run(str(empty))
    assert code == 0
    assert lines == []
    assert "note.eml" in err
