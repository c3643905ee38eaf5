"""Audio devices through sounddevice: a lazy import and lookup by index or name."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

from streamer.errors import DeviceError, NoInputDeviceError

__all__ = ["Direction", "devices", "find_device", "import_sounddevice"]

Direction = Literal["input", "output"]


def import_sounddevice() -> ModuleType:
    """sounddevice, imported on demand: replay and tests never need PortAudio."""
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise DeviceError(
            f"PortAudio is not available ({exc}); install it (Debian: apt install libportaudio2)"
        ) from exc
    module: ModuleType = sd  # untyped package: give it a type here, once
    return module


def devices(sd: ModuleType, direction: Direction) -> list[dict[str, Any]]:
    """Every device with channels in ``direction``, as sounddevice describes them."""
    key = f"max_{direction}_channels"
    return [dict(d) for d in sd.query_devices() if d[key] > 0]


def find_device(sd: ModuleType, wanted: str | int | None, direction: Direction) -> int:
    """The index of the ``direction`` device that ``wanted`` names.

    Parameters
    ----------
    wanted : str, int or None
        An index, a case-insensitive part of a name (an exact name wins over
        partial matches), or None for the system's default.

    Raises
    ------
    NoInputDeviceError
        No such device (for an output too: the class says "no device").
    """
    found = devices(sd, direction)
    if not found:
        raise NoInputDeviceError(f"this machine has no audio {direction} device")
    if wanted is None:
        default = sd.default.device[0 if direction == "input" else 1]
        if default is None or default < 0:
            return int(found[0]["index"])
        return int(default)
    if isinstance(wanted, int):
        if not any(d["index"] == wanted for d in found):
            names = ", ".join(f"{d['index']}: {d['name']}" for d in found)
            raise NoInputDeviceError(f"no {direction} device {wanted} ({direction}s are {names})")
        return wanted
    matches = [d for d in found if wanted.lower() in d["name"].lower()]
    if not matches:
        names = ", ".join(repr(d["name"]) for d in found)
        raise NoInputDeviceError(
            f"no {direction} device matches {wanted!r} ({direction}s are {names})"
        )
    exact = [d for d in matches if d["name"].lower() == wanted.lower()]
    if len(matches) > 1 and len(exact) != 1:
        names = ", ".join(repr(d["name"]) for d in matches)
        raise NoInputDeviceError(f"{wanted!r} matches several {direction} devices: {names}")
    return int((exact or matches)[0]["index"])
