"""The accelerated soak, short: minutes of audio through the full pipeline, memory flat.

The hour-long run is `python tools/soak_replay.py --hours 1` (figures in the closing
notes); this one keeps the tool working and catches a leak that shows in minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, free_tcp_endpoint


def test_short_accelerated_soak(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "soak_replay.py"), "--hours", "0.04",
         "--window", "0.5", "--max-drift", "3", "--endpoint", free_tcp_endpoint(),
         "--json", str(out)],
        capture_output=True, text=True, env=cli_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(out.read_text())
    assert verdict["blocks"] == int(0.04 * 3600 * 48000 / 256)
    assert verdict["memory_flat"] and verdict["rss_growth"] < 0.05
    assert verdict["dropped_blocks"] == 0
    assert len(verdict["windows"]) >= 4
