"""Shared fixtures: loopback endpoints and subprocess helpers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_tcp_endpoint() -> str:
    """A loopback TCP endpoint on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def endpoint() -> str:
    return free_tcp_endpoint()


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for a `streamer` subprocess: no STREAMER__ overrides leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER__")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


STREAMER = [sys.executable, "-m", "streamer"]
