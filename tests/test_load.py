"""Load: several subscriber processes on a daemon publishing flat out, bounded in time."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO, free_tcp_endpoint


def test_every_subscriber_gets_everything_after_joining(cli_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "load_subscribers.py"), "--subscribers", "3",
         "--block", "128", "--seconds", "10", "--endpoint", free_tcp_endpoint()],
        capture_output=True, text=True, env=cli_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["published_blocks"] == 3750
    for result in report["per_subscriber"]:
        assert result["received"] > 0 and result["gaps"] == 0
        assert result["last_seq"] == 3749
    assert report["delivered_after_join"] == [1.0, 1.0, 1.0]
