"""Tests of the file source on real files: audio, .npy and .csv, errors, loop, pacing, stop."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from streamer.config import FileSourceConfig, parse_config
from streamer.errors import ConfigError, InputFileError
from streamer.pipeline import build_pipeline
from streamer.sources import FileSource, open_source

from ..conftest import free_tcp_endpoint
from ..helpers.collector import Collector

F32 = npt.NDArray[np.float32]


@pytest.fixture
def opened() -> Iterator[list[FileSource]]:
    """Sources a test opens through `source`, closed at its end."""
    sources: list[FileSource] = []
    yield sources
    for src in sources:
        src.close()


@pytest.fixture
def source(opened: list[FileSource]) -> Any:
    def make(path: Path | None, **kw: Any) -> FileSource:
        src = FileSource(FileSourceConfig(path=path, **kw), "test")
        opened.append(src)
        return src

    return make


def read_all(src: FileSource, block_size: int) -> F32:
    """Join every block, checking numbering, dtype, layout and fresh buffers."""
    blocks = list(src.blocks(block_size, threading.Event()))
    for seq, b in enumerate(blocks):
        assert b.seq == seq and b.t0 == block_size * seq
        assert b.samples.dtype == np.float32 and b.samples.flags.c_contiguous
        assert b.stream == "test" and b.rate == src.layout.rate
        assert b.channels == src.layout.channels
    for prev, b in itertools.pairwise(blocks):
        assert not np.shares_memory(prev.samples, b.samples)
    return np.concatenate([b.samples for b in blocks], axis=1)


def signal(frames: int, channels: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """Seeded test samples (frames, channels) within [-0.9, 0.9]."""
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (frames, channels))


# ------------------------------------------------------------------- audio


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_16"])
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip_is_sample_exact(
    tmp_path: Path, source: Any, channels: int, subtype: str
) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(10_000, channels), 16000, subtype=subtype)
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    src = source(path)
    assert (src.layout.channels, src.layout.rate) == (channels, 16000)
    assert src.total_frames == 10_000 and not src.live
    for size in (1024, 333, 10_000, 20_000):
        np.testing.assert_array_equal(read_all(src, size), expected.T)


def test_flac_and_uppercase_suffix(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.FLAC"
    sf.write(path, signal(5000, 3), 44100, subtype="PCM_24")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    src = source(path, rate=44100)
    np.testing.assert_array_equal(read_all(src, 512), expected.T)


def test_short_last_block(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(1000, 1), 8000)
    assert [b.frames for b in source(path).blocks(300, threading.Event())] == [300, 300, 300, 100]


def test_rate_mismatch(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(100, 1), 44100)
    with pytest.raises(InputFileError, match=r"in\.wav: sample rate is 44100 Hz .* 48000 Hz"):
        source(path, rate=48000)


# -------------------------------------------------------------- sensor data


@pytest.mark.parametrize("shape", [(700,), (700, 1), (700, 4)])
def test_npy(tmp_path: Path, source: Any, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).standard_normal(shape)  # float64, converted
    path = tmp_path / "x.npy"
    np.save(path, data)
    src = source(path, rate=1000)
    channels = 1 if len(shape) == 1 else shape[1]
    assert (src.layout.channels, src.layout.rate, src.total_frames) == (channels, 1000, 700)
    expected = data.reshape(700, channels).T.astype(np.float32)
    np.testing.assert_array_equal(read_all(src, 64), expected)


def test_npy_integers_are_converted_unscaled(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1, -2], [300, 4], [5, 6]], dtype=np.int16))
    np.testing.assert_array_equal(read_all(source(path, rate=10), 2), [[1, 300, 5], [-2, 4, 6]])


@pytest.mark.parametrize("header", [False, True])
def test_csv(tmp_path: Path, source: Any, header: bool) -> None:
    data = np.random.default_rng(0).standard_normal((1000, 3))
    path = tmp_path / "x.csv"
    lines = ["ax,ay,az"] if header else []
    lines += [",".join(repr(float(v)) for v in row) for row in data]
    lines.insert(500, "")  # a blank line is skipped
    path.write_text("\n".join(lines) + "\n")
    src = source(path, rate=100)
    assert (src.layout.channels, src.layout.rate, src.total_frames) == (3, 100, None)
    for size in (1, 64, 1000, 4096):
        np.testing.assert_array_equal(read_all(src, size), data.T.astype(np.float32))


def test_csv_single_column_without_final_newline(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    path.write_text("value\n1\n 2.5\n-3e-1")
    np.testing.assert_array_equal(
        read_all(source(path, rate=5), 2), np.array([[1.0, 2.5, -0.3]], dtype=np.float32)
    )


# ------------------------------------------------------------------- errors


def test_no_path(source: Any) -> None:
    with pytest.raises(ConfigError, match=r"source\.path: no input file given"):
        source(None)


def test_missing_file(tmp_path: Path, source: Any) -> None:
    with pytest.raises(InputFileError, match=r"nope\.wav: no such file") as info:
        source(tmp_path / "nope.wav")
    assert info.value.path == tmp_path / "nope.wav"


def test_directory(tmp_path: Path, source: Any) -> None:
    with pytest.raises(InputFileError, match="is a directory"):
        source(tmp_path)


@pytest.mark.parametrize("name", ["empty.wav", "empty.npy", "empty.csv"])
def test_empty_file(tmp_path: Path, source: Any, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(InputFileError, match="is empty: it holds no samples"):
        source(tmp_path / name, rate=100)


def test_corrupt_audio(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(InputFileError, match=r"noise\.wav: not a readable audio file \(.+\)$"):
        source(path)


def test_truncated_audio(tmp_path: Path, source: Any) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, signal(1000, 1), 8000)
    path = tmp_path / "cut.wav"
    path.write_bytes(good.read_bytes()[:30])  # inside the header
    with pytest.raises(InputFileError, match=r"cut\.wav: not a readable audio file"):
        source(path)


def test_audio_with_no_frames(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros((0, 2)), 8000)
    with pytest.raises(InputFileError, match=r"zero\.wav: holds no samples"):
        source(path)


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_sensor_data_needs_a_rate(tmp_path: Path, source: Any, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_text("1,2\n")
    with pytest.raises(ConfigError, match=rf"source\.rate: is required for \{suffix} input"):
        source(path)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 3, 2)), r"holds a 3-D array of shape \(4, 3, 2\); expected 1-D"),
        (np.array(["a", "b"]), r"holds <U1 values; expected a numeric"),
        (np.zeros(3, dtype=complex), r"holds complex128 values"),
        (np.zeros((0, 2)), "holds no samples"),
    ],
)
def test_npy_refused(tmp_path: Path, source: Any, array: Any, match: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, array)
    with pytest.raises(InputFileError, match=match):
        source(path, rate=100)


def test_npy_corrupt(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(InputFileError, match=r"x\.npy: not a readable \.npy file"):
        source(path, rate=100)


def test_npy_pickled_objects_refused(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(InputFileError, match=r"not a readable \.npy file"):
        source(path, rate=100)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n3,4\n5,x\n", r"x\.csv: line 4: not a row of numbers: '5,x'"),
        ("1,2\n3,4\n5,6,7\n", r"x\.csv: line 3: holds 3 values, expected 2"),
        ("a,b\nc,d\n1,2\n", r"x\.csv: line 2: not a row of numbers"),
        ("a,b,c\n1,2\n", r"the header names 3 columns but line 2 holds 2"),
        ("time,value\n\n", r"x\.csv: holds no samples"),
    ],
)
def test_csv_malformed(tmp_path: Path, source: Any, text: str, match: str) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(InputFileError, match=match):
        list(source(path, rate=10).blocks(2, threading.Event()))


def test_csv_bad_row_far_into_the_file(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    lines = [f"{i},{i}" for i in range(5000)]
    lines[4321] = "1;2"
    path.write_text("\n".join(lines))
    src = source(path, rate=10)
    with pytest.raises(InputFileError, match="line 4322: not a row of numbers"):
        list(src.blocks(1000, threading.Event()))


def test_csv_not_utf8(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage\n")
    with pytest.raises(InputFileError, match="not UTF-8 text"):
        source(path, rate=10)


# -------------------------------------------------------- loop, stop, pacing


def test_loop_keeps_counting(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(1000, 2), 8000, subtype="FLOAT")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    src = source(path, loop=True)
    assert src.total_frames is None
    blocks = list(itertools.islice(src.blocks(300, threading.Event()), 10))
    assert [b.seq for b in blocks] == list(range(10))
    assert [b.t0 for b in blocks] == [300 * i for i in range(10)]
    assert all(b.frames == 300 for b in blocks)
    joined = np.concatenate([b.samples for b in blocks], axis=1)
    np.testing.assert_array_equal(joined, np.tile(expected.T, 3)[:, :3000])


def test_loop_block_longer_than_file(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(7.0))
    block = next(source(path, rate=10, loop=True).blocks(20, threading.Event()))
    np.testing.assert_array_equal(block.samples[0], np.arange(20) % 7)


def test_blocks_twice_starts_again(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    path.write_text("t\n1\n2\n3\n")
    src = source(path, rate=10)
    first = next(src.blocks(2, threading.Event()))
    np.testing.assert_array_equal(read_all(src, 2), [[1, 2, 3]])
    np.testing.assert_array_equal(first.samples, [[1, 2]])


def test_stop_event_ends_iteration(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(1000, 1), 8000)
    stop = threading.Event()
    seen = []
    for block in source(path, loop=True).blocks(100, stop):
        seen.append(block.seq)
        if block.seq == 4:
            stop.set()
    assert seen == [0, 1, 2, 3, 4]


def test_stop_interrupts_pacing(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(50_000))
    stop = threading.Event()
    timer = threading.Timer(0.05, stop.set)
    start = time.monotonic()
    timer.start()
    try:
        blocks = list(source(path, rate=10_000, realtime=True).blocks(40_000, stop))  # 4 s block
    finally:
        timer.cancel()
    assert blocks == []
    assert time.monotonic() - start < 1.0


def test_realtime_pacing(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(2000, 1), 8000)  # 0.25 s
    start = time.monotonic()
    frames = sum(b.frames for b in source(path, realtime=True).blocks(200, threading.Event()))
    assert frames == 2000
    assert 0.2 <= time.monotonic() - start < 2.0


def test_close_closes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(100, 1), 8000)
    src = FileSource(FileSourceConfig(path=path), "test")
    src.close()
    with pytest.raises(sf.SoundFileRuntimeError):
        next(src.blocks(10, threading.Event()))


def test_open_source_builds_file_source(tmp_path: Path, opened: list[FileSource]) -> None:
    path = tmp_path / "in.wav"
    sf.write(path, signal(100, 1), 8000)
    src = open_source(FileSourceConfig(path=path), "main")
    assert isinstance(src, FileSource)
    opened.append(src)
    assert src.layout.rate == 8000


def test_csv_leading_blank_lines(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    path.write_text("\n\n1,2\n\n3,4\n")
    np.testing.assert_array_equal(read_all(source(path, rate=10), 3), [[1, 3], [2, 4]])


def test_npz_refused(tmp_path: Path, source: Any) -> None:
    np.savez(tmp_path / "z.npz", a=np.zeros(3))
    path = tmp_path / "z.npy"
    (tmp_path / "z.npz").rename(path)
    with pytest.raises(InputFileError, match=r"z\.npy: not a \.npy array"):
        source(path, rate=10)


def write_sigmf(
    folder: Path,
    data: np.ndarray,
    datatype: str,
    rate: int = 10_000,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A SigMF recording written with the sigmf package: (frames, channels) data."""
    import sigmf
    from sigmf import SigMFFile

    data_path = folder / "rec.sigmf-data"
    data.tofile(data_path)
    meta = SigMFFile(
        data_file=str(data_path),
        global_info={
            sigmf.DATATYPE_KEY: datatype,
            sigmf.SAMPLE_RATE_KEY: rate,
            sigmf.NUM_CHANNELS_KEY: data.shape[1] if data.ndim == 2 else 1,
            **(extra or {}),
        },
    )
    meta.add_capture(0, metadata={})
    meta_path = folder / "rec.sigmf-meta"
    meta.tofile(str(meta_path))
    return meta_path


def test_sigmf_recording_is_read_with_its_rate_and_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(4).standard_normal((3000, 2)).astype(np.float32)
    meta = write_sigmf(tmp_path, data, "rf32_le")
    for path in (meta, tmp_path / "rec.sigmf-data"):
        source = FileSource(FileSourceConfig(path=path), "s")
        assert source.layout.rate == 10_000 and source.layout.channels == 2
        assert source.total_frames == 3000
        got = np.concatenate([b.samples for b in source.blocks(700, threading.Event())], axis=1)
        source.close()
        np.testing.assert_array_equal(got, data.T)


def test_sigmf_integers_are_scaled_and_complex_is_refused(tmp_path: Path) -> None:
    ints = np.array([[0], [16384], [-32768]], dtype="<i2")
    int_meta = write_sigmf(tmp_path, ints, "ri16_le")
    source = FileSource(FileSourceConfig(path=int_meta), "s")
    block = next(source.blocks(8, threading.Event()))
    np.testing.assert_allclose(block.samples[0], [0.0, 0.5, -1.0])
    cplx = tmp_path / "c"
    cplx.mkdir()
    meta = write_sigmf(cplx, np.zeros((4, 1), np.complex64), "cf32_le")
    with pytest.raises(InputFileError, match=r"complex \(cf32_le\) samples"):
        FileSource(FileSourceConfig(path=meta), "s")
    with pytest.raises(InputFileError, match=r"sample rate is 10000 Hz but source.rate asks"):
        FileSource(FileSourceConfig(path=int_meta, rate=8000), "s")


# ---------------------------------------------------------------- csv time column


def write_timed_csv(path: Path, data: np.ndarray, rate: float, *, decimals: int = 9) -> None:
    """A .csv with a header, a time column first (written with ``decimals``), then channels."""
    times = np.arange(data.shape[0]) / rate
    lines = ["time_s,ax,ay"]
    lines += [f"{t:.{decimals}f}," + ",".join(repr(float(v)) for v in row)
              for t, row in zip(times, data, strict=True)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("column", ["time_s", 0])
def test_csv_time_column_gives_the_rate_and_is_not_a_channel(
    tmp_path: Path, source: Any, column: str | int
) -> None:
    data = np.random.default_rng(5).standard_normal((3000, 2))
    path = tmp_path / "x.csv"
    write_timed_csv(path, data, 25_600, decimals=6)  # 1 µs resolution: jitter of 1/39 step
    src = source(path, time_column=column)
    assert (src.layout.channels, src.layout.rate) == (2, 25_600)
    assert dict(src.metadata) == {
        "file": "x.csv", "channel_names": ["ax", "ay"], "time_column": "time_s"
    }  # fmt: skip
    for size in (1, 700, 4096):
        np.testing.assert_array_equal(read_all(src, size), data.T.astype(np.float32))
    assert source(path, time_column=column, rate=25_600).layout.rate == 25_600


def test_csv_time_column_unevenly_spaced_is_refused_naming_the_row(
    tmp_path: Path, source: Any
) -> None:
    data = np.zeros((2000, 2))
    path = tmp_path / "x.csv"
    write_timed_csv(path, data, 1000)
    lines = path.read_text().splitlines()
    lines[1501] = "1.5003," + lines[1501].split(",", 1)[1]  # row 1501 is 0.3 periods late
    path.write_text("\n".join(lines) + "\n")
    src = source(path, time_column="time_s")
    with pytest.raises(
        InputFileError,
        match=r"x\.csv: row 1501 \(line 1502\): time 1\.5003 is not evenly spaced "
        r"\(expected 1\.5 at 1000 Hz\)",
    ):
        read_all(src, 256)
    del lines[1001]  # a missing row shifts every later time by a period
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"row 1001 \(line 1002\): time 1\.001 "):
        read_all(source(path, time_column="time_s"), 256)


def test_csv_time_column_against_the_configured_rate(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.csv"
    write_timed_csv(path, np.zeros((100, 2)), 1000)
    with pytest.raises(InputFileError, match=r"row 2 \(line 3\): time 0\.001.* at 2000 Hz"):
        read_all(source(path, time_column=0, rate=2000), 64)


@pytest.mark.parametrize(
    ("text", "column", "error", "match"),
    [
        ("a,b\n1,2\n", "t", InputFileError, r"x\.csv: has no time column 't' \(columns: a, b\)"),
        ("1,2\n3,4\n", "t", InputFileError, r"has no time column 't' \(no header line"),
        ("1,2\n3,4\n", 2, InputFileError, r"has 2 columns, so no time column 2"),
        ("t\n0\n0.1\n", "t", InputFileError, r"holds only its time column"),
        ("t,a\n0,1\n", "t", InputFileError, r"has a single row: .* \(set source\.rate\)"),
        ("t,a\n0,1\n0,2\n", "t", InputFileError, r"the time column does not increase"),
    ],
)
def test_csv_bad_time_column(
    tmp_path: Path, source: Any, text: str, column: str | int, error: type, match: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(text)
    with pytest.raises(error, match=match):
        source(path, time_column=column)


def test_time_column_is_for_csv_only(tmp_path: Path, source: Any) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(4))
    with pytest.raises(ConfigError, match=r"source\.time_column: applies to \.csv input only"):
        source(path, rate=10, time_column=0)


SENSOR_EXT = {"name": "sensor", "version": "0.1.0", "optional": True}


def test_sigmf_channel_names_and_units_become_metadata(tmp_path: Path) -> None:
    data = np.zeros((100, 2), np.float32)
    meta = write_sigmf(
        tmp_path, data, "rf32_le",
        extra={"core:extensions": [SENSOR_EXT], "core:description": "pump 1",
               "sensor:channel_names": ["x", "y"], "sensor:units": "g"},
    )  # fmt: skip
    source = FileSource(FileSourceConfig(path=meta), "s")
    source.close()
    assert dict(source.metadata) == {
        "file": "rec.sigmf-meta", "description": "pump 1", "channel_names": ["x", "y"],
        "units": ["g", "g"],
    }  # fmt: skip
    bad = tmp_path / "bad"
    bad.mkdir()
    meta = write_sigmf(
        bad, data, "rf32_le", extra={"core:extensions": [SENSOR_EXT], "sensor:units": ["g"]}
    )
    with pytest.raises(InputFileError, match=r"sensor:units must be a list of 2 strings"):
        FileSource(FileSourceConfig(path=meta), "s")


def test_file_metadata_goes_out_in_audio_and_status_headers(tmp_path: Path) -> None:
    """A real PUB socket on loopback: ``meta`` rides in audio and status headers."""
    path = tmp_path / "pump.csv"
    write_timed_csv(path, np.zeros((4000, 2)), 2000)
    endpoint = free_tcp_endpoint()
    cfg = parse_config(
        {"stream": "pump", "stages": [],
         "source": {"kind": "file", "path": str(path), "time_column": "time_s",
                    "realtime": True},
         "pipeline": {"block": 100}, "publish": {"endpoint": endpoint}},
        environ={},
    )  # fmt: skip
    collector = Collector(endpoint)
    pipeline = build_pipeline(cfg, publish=True)
    assert pipeline.publisher is not None
    try:
        pipeline.start()
        want = {"file": "pump.csv", "channel_names": ["ax", "ay"], "time_column": "time_s"}
        collector.wait_for("audio", lambda: len(collector.of("audio")) > 2)
        pipeline.publisher.publish_status(pipeline.snapshot())
        collector.wait_for("status", lambda: bool(collector.of("status")))
    finally:
        pipeline.request_stop()
        pipeline.wait(10)
        pipeline.close()
        collector.close()
    assert all(m.header["meta"] == want for m in collector.of("audio"))
    assert collector.of("status")[0].header["meta"] == want
    assert all("meta" not in m.header for m in collector.of("metrics"))
