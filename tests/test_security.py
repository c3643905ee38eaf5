"""CURVE: only subscribers whose keys the publisher holds get anything, and only encrypted."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.config import parse_config
from streamer.errors import ConfigError

from .conftest import STREAMER, free_tcp_endpoint


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Server keys, an allowed client (its public key in clients/), and a stranger."""
    for name in ("server", "alice", "mallory"):
        assert main(["keys", str(tmp_path / "keys"), "--name", name]) == 0
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "alice.key").write_bytes((tmp_path / "keys" / "alice.key").read_bytes())
    return tmp_path


def test_keys_command_writes_a_private_secret(keys: Path) -> None:
    secret = keys / "keys" / "server.key_secret"
    assert (keys / "keys" / "server.key").exists() and secret.exists()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_only_known_subscribers_receive(keys: Path, cli_env: dict[str, str]) -> None:
    endpoint = free_tcp_endpoint()
    env = {
        **cli_env,
        "STREAMER__PUBLISH__ENDPOINT": endpoint,
        "STREAMER__PUBLISH__CURVE_SECRET_KEY": str(keys / "keys" / "server.key_secret"),
        "STREAMER__PUBLISH__CURVE_CLIENTS": str(keys / "clients"),
    }
    daemon = subprocess.Popen([*STREAMER, "run"], env=env, stderr=subprocess.PIPE, text=True)

    def subscribe(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STREAMER, "subscribe", "--endpoint", endpoint, "--topic", "audio/", "--count",
             "5", "--timeout", "3", *extra],
            capture_output=True, text=True, env=cli_env, timeout=30, check=False,
        )  # fmt: skip

    server_key = str(keys / "keys" / "server.key")
    try:
        alice = subscribe("--server-key", server_key, "--client-key",
                          str(keys / "keys" / "alice.key_secret"))  # fmt: skip
        mallory = subscribe("--server-key", server_key, "--client-key",
                            str(keys / "keys" / "mallory.key_secret"))  # fmt: skip
        plain = subscribe()
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    assert alice.returncode == 0, alice.stderr
    assert len([json.loads(line) for line in alice.stdout.splitlines()]) == 5
    assert mallory.returncode == 1 and mallory.stdout == ""
    assert plain.returncode == 1 and plain.stdout == ""


def test_public_binding_needs_keys_or_an_explicit_insecure() -> None:
    with pytest.raises(ConfigError, match=r"needs CURVE keys .* or allow_insecure = true"):
        parse_config({"publish": {"endpoint": "tcp://0.0.0.0:5555"}}, environ={})
    with pytest.raises(ConfigError, match="CURVE needs both"):
        parse_config({"publish": {"curve_secret_key": "s.key_secret"}}, environ={})
    cfg = parse_config(
        {"publish": {"endpoint": "tcp://0.0.0.0:5555", "curve_secret_key": "s.key_secret",
                     "curve_clients": "clients"}},
        environ={},
    )  # fmt: skip
    assert cfg.publish.curve_clients == Path("clients")


def test_a_missing_key_file_is_a_one_line_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    env = {
        **cli_env,
        "STREAMER__PUBLISH__ENDPOINT": free_tcp_endpoint(),
        "STREAMER__PUBLISH__CURVE_SECRET_KEY": str(tmp_path / "none.key_secret"),
        "STREAMER__PUBLISH__CURVE_CLIENTS": str(tmp_path),
    }
    proc = subprocess.run([*STREAMER, "run"], capture_output=True, text=True, env=env,
                          timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "publish.curve_secret_key: cannot read key file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
