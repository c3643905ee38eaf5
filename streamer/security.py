"""CURVE encryption and client authentication for the ZeroMQ sockets, and key generation.

A publisher that binds beyond loopback must encrypt: it holds a secret key,
and lets in only the subscribers whose public keys lie in a folder it is
given (ZeroMQ's ZAP handler, run by pyzmq's ThreadAuthenticator). A
subscriber holds its own key pair and knows the publisher's public key.
Key files are ZeroMQ's certificate format, made by ``streamer keys``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamer.errors import ConfigError

__all__ = ["create_keys", "secure_client", "secure_server"]


def _load(path: Path, key: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read key file {path}: {exc}", key=key) from exc
    if secret and secret_key is None:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)", key=key)
    return public, secret_key


def secure_server(
    socket: zmq.Socket[Any], secret_key: Path, clients: Path, *, key: str
) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server admitting only the public keys in ``clients``.

    Returns the running authenticator; stop it when the socket closes.
    """
    public, secret = _load(secret_key, f"{key}.curve_secret_key", secret=True)
    if not clients.is_dir():
        raise ConfigError(f"{clients} is not a folder of public keys", key=f"{key}.curve_clients")
    auth = ThreadAuthenticator(socket.context)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def secure_client(socket: zmq.Socket[Any], server_key: Path, secret_key: Path, *, key: str) -> None:
    """Make ``socket`` a CURVE client of the server whose public key is in ``server_key``."""
    server_public, _ = _load(server_key, f"{key}.curve_server_key", secret=False)
    public, secret = _load(secret_key, f"{key}.curve_secret_key", secret=True)
    socket.curve_serverkey = server_public
    socket.curve_publickey = public
    socket.curve_secretkey = secret


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a key pair ``NAME.key`` (public, to share) and ``NAME.key_secret`` (keep)."""
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)
