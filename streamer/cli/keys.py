"""``streamer keys``: make CURVE key pairs for a publisher and its subscribers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamer.security import create_keys


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "keys",
        help="make CURVE key pairs",
        description="Write NAME.key (public: give it to the other side) and NAME.key_secret "
        "(keep it) into FOLDER. The publisher needs its .key_secret and a folder holding "
        "the .key of every subscriber it lets in; a subscriber needs its own .key_secret "
        "and the publisher's .key.",
    )
    parser.add_argument("folder", type=Path, help="where to write the keys")
    parser.add_argument("--name", default="server", help="file name stem (default: server)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    public, secret = create_keys(args.folder, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 600: keep it private)")
    return 0
