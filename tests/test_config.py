"""Config loading: defaults, examples, refusals with the key's path, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.config import (
    Config,
    FileSourceConfig,
    FirConfig,
    SynthSourceConfig,
    load_config,
    parse_config,
    with_overrides,
)
from streamer.errors import ConfigError

from .conftest import REPO


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


def test_empty_file_is_the_embedded_default(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), environ={})
    assert cfg == load_config(None, environ={})
    assert isinstance(cfg.source, SynthSourceConfig)
    assert [s.kind for s in cfg.stages] == ["fir", "anomaly"]
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5555"


def test_default_toml_spells_out_the_embedded_default() -> None:
    assert load_config(REPO / "config" / "default.toml", environ={}) == load_config(
        None, environ={}
    )


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path: Path) -> None:
    assert isinstance(load_config(path, environ={}), Config)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bogus = 1", r"cfg\.toml: bogus: unknown key"),
        ("[pipeline]\nblok = 2", r"pipeline\.blok: unknown key"),
        ("[pipeline]\nblock = 0", r"pipeline\.block: Input should be greater than or equal to 1"),
        ("[pipeline]\nblock = 'x'", r"pipeline\.block: Input should be a valid integer"),
        ("[[stages]]\nkind = 'reverb'", r"stages\[0\]: unknown kind 'reverb' \(expected one of"),
        ("[[stages]]\ndesign = 'lowpass'", r"stages\[0\]: missing 'kind'"),
        ("[[stages]]\nkind='fir'\nnumtaps = -3", r"stages\[0\]\.numtaps: Input should be greater"),
        (
            "[[stages]]\nkind='fir'\ndesign='lowpass'",
            r"stages\[0\]: cutoff_hz for a lowpass must be a single frequency",
        ),
        (
            "[[stages]]\nkind='fir'\ndesign='highpass'\ncutoff_hz=100.0\nnumtaps=100",
            r"needs an odd numtaps, got 100",
        ),
        (
            "[[stages]]\nkind='fir'\ntaps_file='x.npy'\nnumtaps=11",
            r"give either taps_file or a design, not both",
        ),
        ("[[stages]]\nkind='fir'\ncutoff_hz=[900.0, 100.0]", r"must satisfy 0 < low < high"),
        ("[source]\nkind = 'tape'", r"source: unknown kind 'tape'"),
        ("[publish]\nendpoint = 'tcp://0.0.0.0:5555'", r"not loopback; .* allow_insecure = true"),
        ("[publish]\nendpoint = 'http://x'", r"must start with tcp://"),
        ("stream = 'a/b'", r"stream: String should match pattern"),
        ("[pipeline\nblock = 1", r"cfg\.toml: not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_key_path(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), environ={})


def test_error_counts_further_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\(and 1 more problem\)"):
        load_config(write(tmp_path, "a = 1\nb = 2"), environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_config(Path("nope.toml"), environ={})


def test_non_loopback_allowed_when_insecure_is_explicit(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[publish]\nendpoint='tcp://0.0.0.0:5555'\nallow_insecure=true"),
        environ={},
    )
    assert cfg.publish.endpoint == "tcp://0.0.0.0:5555"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = "[source]\nkind='file'\npath='in.wav'\n[[stages]]\nkind='fir'\ntaps_file='h.npy'"
    cfg = load_config(write(tmp_path, text), environ={})
    assert isinstance(cfg.source, FileSourceConfig)
    assert cfg.source.path == tmp_path / "in.wav"
    assert cfg.stages[0].taps_file == tmp_path / "h.npy"


def test_environment_overrides_fields() -> None:
    env = {
        "STREAMER__PIPELINE__BLOCK": "512",
        "STREAMER__PUBLISH__ENDPOINT": "tcp://127.0.0.1:6000",
        "STREAMER__STAGES__0__NUMTAPS": "101",
        "STREAMER__SOURCE__TONES_HZ": "[100.0]",
        "OTHER": "x",
    }
    cfg = parse_config({}, environ=env)
    assert cfg.pipeline.block == 512
    assert cfg.publish.endpoint == "tcp://127.0.0.1:6000"
    assert cfg.stages[0].numtaps == 101
    assert isinstance(cfg.source, SynthSourceConfig)
    assert cfg.source.tones_hz == (100.0,)


def test_environment_override_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"STREAMER__STAGES__3__NUMTAPS: no list item '3'"):
        parse_config({}, environ={"STREAMER__STAGES__3__NUMTAPS": "5"})
    with pytest.raises(ConfigError, match=r"pipeline\.block: Input should be a valid integer"):
        parse_config({}, environ={"STREAMER__PIPELINE__BLOCK": "big"})


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(ValueError, match="frozen"):
        cfg.stream = "other"  # type: ignore[misc]


def test_with_overrides_keeps_either_or_choices(tmp_path: Path) -> None:
    cfg = parse_config({"stages": [{"kind": "fir", "taps_file": str(tmp_path / "h.npy")}]})
    out = with_overrides(cfg, {"pipeline": {"block": 64}})
    assert out.pipeline.block == 64
    assert isinstance(out.stages[0], FirConfig)
    assert out.stages[0].taps_file == tmp_path / "h.npy"
    swapped = with_overrides(cfg, {}, replace={"source": {"kind": "file", "path": "x.wav"}})
    assert isinstance(swapped.source, FileSourceConfig)
