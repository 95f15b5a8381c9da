"""`mailfold dsn parse`: one JSON line per recipient, problems on stderr, exit 1 on unreadable files."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from mailfold.bounces import parser as bounce_parser
from mailfold.ingest.cli import dsn_parse_command

FIXTURES = Path(__file__).parents[2] / "fixtures" / "bounces"


def run(*files: str, explain: bool = False) -> tuple[int, list[dict[str, object]], str]:
    out, err = io.StringIO(), io.StringIO()
    args = argparse.Namespace(files=list(files), explain=explain)
    code = dsn_parse_command(args, out=out, err=err)
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


def test_explain_names_the_reader_and_the_rule_behind_each_field() -> None:
    path = str(FIXTURES / "rfc3464-01.eml")
    _, plain, _ = run(path)
    code, lines, _ = run(path, explain=True)
    assert code == 0
    assert "explain" not in plain[0]
    explained = lines[0]["explain"]
    assert isinstance(explained, dict)
    assert explained["reader"] in ("rfc3464", "postfix", "sendmail")
    assert set(explained) >= {"recipient", "status", "reply_code", "reason", "kind"}
    assert explained["recipient"] == "Final-Recipient field"
    assert explained["reason"]  # e.g. "status-code:userunknown(5.1.1)"
    assert {k: v for k, v in lines[0].items() if k != "explain"} == plain[0]


def test_a_parser_failure_is_reported_with_the_files_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: bytes, depth: int = 0) -> object:
        raise RuntimeError("a bug in a reader")

    monkeypatch.setattr(bounce_parser, "_parse", broken)
    path = tmp_path / "report.eml"
    path.write_bytes(b"Subject: x\r\n\r\n<a@b.example>: 550 no such user\r\n")
    code, lines, err = run(str(path))
    assert code == 1
    assert lines == []
    assert "report.eml" in err
    assert "sha256:" in err
