"""Every `curl` example in the README runs as written (#30 item 17) against the live service with the packaged
model: the base URL swapped for the test service's, and the API key added as the README tells a user with keys to
add it (`-H "authorization: Bearer $KEY"`). Ids the README leaves to the reader (`<record_id>`, `batch_…`) are
taken from the answers of the examples before them, as a reader would."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from app.launcher.local_service import ROOT

README = ROOT / "README.md"
PLACEHOLDERS = {"<record_id>": "record_id", "batch_…": "batch", "head_…": "head"}
# What the README itself says these answer when run in its order: a finished batch cannot be cancelled.
DOCUMENTED = {"/cancel": (409, "batch_finished")}


def curl_commands(text: str) -> list[str]:
    """The `curl` commands of the README's bash blocks, continuation lines and multi-line quoted bodies joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        current = ""
        for line in block.splitlines():
            current = f"{current}\n{line}" if current else line
            if current.endswith("\\"):
                continue
            try:
                shlex.split(current, comments=True)
            except ValueError:  # a quoted body that goes on past this line
                continue
            if current.lstrip().startswith("curl "):
                commands.append(current)
            current = ""
    return commands


def without_comment(command: str) -> str:
    """The command without a trailing `# …` comment (one outside quotes)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command


def test_the_readme_has_curl_examples_for_every_area() -> None:
    commands = curl_commands(README.read_text())
    for path in ("/v1/score", "/v1/generate", "/v1/batches", "/v1/analysis/", "/v1/calibrations", "/v1/heads"):
        assert any(path in c for c in commands), path
    assert all("$AUTH" not in c for c in commands)  # nothing the README never defines
    posts = [c for c in commands if " -d " in c or "\n  -d " in c]
    assert posts and all("content-type: application/json" in c for c in posts)


def test_every_readme_curl_example_runs_as_written(service: str, tmp_path: Path) -> None:
    host = service.removeprefix("http://")
    seen: dict[str, str] = {}
    ran, skipped = [], []
    for written in curl_commands(README.read_text()):
        command = without_comment(written).replace("localhost:8000", host)
        for placeholder, kind in PLACEHOLDERS.items():
            if placeholder in command and kind in seen:
                command = command.replace(placeholder, seen[kind])
        if "…" in command or "<" in command:
            skipped.append(written)  # elided by the README itself ("…": texts and ids of the reader's own)
            continue
        status, body = run_curl(command, tmp_path, host)
        # "JSONL once completed (409 batch_not_finished before)", a head "answers once the status is succeeded"
        # (409 head_not_ready while it trains): a reader waits for them
        if "/results" in command or '"heads"' in command:
            deadline = time.monotonic() + 300
            while status == 409 and time.monotonic() < deadline:
                time.sleep(0.5)
                status, body = run_curl(command, tmp_path, host)
        expected = next((v for k, v in DOCUMENTED.items() if k in command), None)
        if expected is not None and status == expected[0]:
            assert json.loads(body)["error"]["code"] == expected[1], (written, body)
        else:
            assert 200 <= status < 300, (written, status, body)
        ran.append(written)
        remember(body, seen)
    assert len(ran) >= 14, ran
    assert not skipped, skipped  # nothing elided: every example runs
    assert (tmp_path / "rows.safetensors").stat().st_size > 7 * 49152 * 4  # rows 1..7 of the export, in the file


def run_curl(command: str, cwd: Path, host: str) -> tuple[int, str]:
    """Run the example in bash with the key a keyed service needs, as the README says to add it."""
    keyed = command.replace("curl -s", 'curl -s -w "\\n%{http_code}" -H "authorization: Bearer $KEY"', 1)
    assert keyed != command, command
    done = subprocess.run(
        ["bash", "-c", keyed],
        cwd=cwd,
        env={**os.environ, "KEY": "key-alpha"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (command, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def remember(body: str, seen: dict[str, str]) -> None:
    """Ids a reader would copy from an answer into the next example."""
    try:
        answer = json.loads(body)
    except ValueError:
        return
    if not isinstance(answer, dict):
        return
    if isinstance(answer.get("record_id"), str):
        seen["record_id"] = answer["record_id"]
    found = answer.get("id")
    if isinstance(found, str) and found.startswith("batch_"):
        seen["batch"] = found
    if isinstance(found, str) and found.startswith("head_"):
        seen["head"] = found


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("curl -s x/y  # a comment", "curl -s x/y"),
        ("curl -s 'x?a=1#b'", "curl -s 'x?a=1#b'"),
        ('curl -s x -d \'{"a": "# not a comment"}\'', 'curl -s x -d \'{"a": "# not a comment"}\''),
    ],
)
def test_comments_are_cut_outside_quotes_only(written: str, expected: str) -> None:
    assert without_comment(written) == expected
