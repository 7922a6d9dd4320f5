"""`dfdaemon` on the command line: every bad value is one line on stderr and exit 1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from peer.cli import main

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--upload-limit", "fast"], "--upload-limit"),
        (["--mount", "no-mountpoint"], "REF:MOUNTPOINT"),
    ],
)
def test_bad_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["--supernode", "http://127.0.0.1:1", "--data-dir", str(tmp_path), *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dfdaemon: error: ") and message in err and "\n" not in err


def test_a_taken_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--supernode", "http://127.0.0.1:1", "--data-dir", str(tmp_path), "--listen",
                f"127.0.0.1:{port}", "--log-level", "error"]  # fmt: skip
        assert main(argv) == 1
    assert "address already in use" in capsys.readouterr().err.lower()
