"""``streamer devices``: the audio devices PortAudio sees, listed like ``python -m sounddevice``."""

from __future__ import annotations

import argparse
from typing import Any

from streamer.devices import import_sounddevice


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = commands.add_parser(
        "devices",
        help="list audio input and output devices",
        description="List audio devices: '>' marks the default input, '<' the default output. "
        "A mic source's `device` takes an index or a part of a name from this list.",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    sd = import_sounddevice()
    devices = sd.query_devices()
    if len(devices) == 0:
        print("no audio devices")
        return 0
    print(devices)
    return 0
