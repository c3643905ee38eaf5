"""Configuration: pydantic models for one stream, loaded from TOML and the environment.

Every field has a default, so an empty file is valid and runs the embedded
default pipeline (the ``synth`` source through every stage, published on
loopback). A wrong key, type or value is refused at start-up as a `ConfigError`
that names the file, the key's path and the reason.

Environment variables override fields, for daemons run under systemd:
``STREAMER__PIPELINE__BLOCK=512`` sets ``pipeline.block``; list items are
addressed by index (``STREAMER__STAGES__0__NUMTAPS=255``). Values are read as
TOML values when they parse as one (numbers, booleans, arrays), else as strings.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from streamer.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "AnomalyConfig",
    "Config",
    "DenoiseConfig",
    "FileSourceConfig",
    "FirConfig",
    "MicSourceConfig",
    "OutputConfig",
    "PipelineConfig",
    "PrometheusConfig",
    "PublishConfig",
    "ResampleConfig",
    "SourceConfig",
    "StageConfig",
    "StreamConfig",
    "SynthSourceConfig",
    "ZmqSourceConfig",
    "load_config",
    "load_stream",
    "parse_config",
    "with_overrides",
]

ENV_PREFIX = "STREAMER__"


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Make a relative path relative to the config file's folder (when loaded from one)."""
    if value is None:
        return None
    value = value.expanduser()
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _resolve_model(value: str | None, info: ValidationInfo) -> str | None:
    """A shipped model's name stays as it is; a model file given by path is made relative to
    the config file's folder."""
    if value is None or not (value.endswith(".npz") or "/" in value):
        return value
    resolved = _resolve_path(Path(value), info)
    return None if resolved is None else str(resolved)


ModelRef = Annotated[str, AfterValidator(_resolve_model)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------- sources


class SynthSourceConfig(_Model):
    """A deterministic, seeded test scene; the embedded default source."""

    kind: Literal["synth"] = "synth"
    rate: int = Field(48_000, ge=1_000, le=768_000, description="Sample rate, Hz.")
    channels: int = Field(1, ge=1, le=64, description="Channel count.")
    seed: int = Field(0, ge=0, description="Seed of every random part of the scene.")
    duration_s: float | None = Field(
        None, gt=0, description="Length of the scene in seconds; unset means endless."
    )
    realtime: bool = Field(
        True, description="Pace blocks at real time (a live source) or emit them at once."
    )
    tones_hz: tuple[float, ...] = Field(
        (440.0, 1250.0), description="Steady tones always present, Hz."
    )
    tone_level_db: float = Field(-26.0, le=0, description="Level of each tone, dBFS.")
    noise: Literal["white", "pink", "brown"] = Field("pink", description="Background noise colour.")
    noise_level_db: float = Field(-42.0, le=0, description="Background noise level, dBFS RMS.")
    hum_hz: float | None = Field(
        50.0, gt=0, description="Mains hum fundamental with harmonics, Hz; unset for none."
    )
    speech_bursts: bool = Field(True, description="Add speech-like voiced bursts.")
    anomalies: bool = Field(
        True, description="Inject anomalies (a whistle, a click train, a dropout) periodically."
    )
    anomaly_period_s: float = Field(
        20.0, ge=4.0, description="The injected anomalies repeat with this period, seconds."
    )


class FileSourceConfig(_Model):
    """Audio (WAV/FLAC/OGG) or sensor data (.npy, .csv) read from a file."""

    kind: Literal["file"] = "file"
    path: ConfigPath | None = Field(
        None, description="The file; `streamer replay INPUT` supplies it on the command line."
    )
    rate: int | None = Field(
        None,
        ge=1,
        le=768_000,
        description="Sample rate, Hz: required for .npy and for .csv without a time column; "
        "checked against audio files, SigMF recordings and a .csv time column.",
    )
    time_column: str | int | None = Field(
        None,
        description=".csv only: the column holding each row's time in seconds, by header name "
        "or index from 0; not a channel. Its spacing must be even and gives the rate when "
        "rate is unset.",
    )
    time_tolerance: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="How far a row's time may stray from the even grid, in sample periods "
        "(timestamps are often written with few decimals).",
    )
    realtime: bool = Field(False, description="Pace blocks at real time instead of at once.")
    loop: bool = Field(False, description="Start again at the end of the file (for demos).")

    @model_validator(mode="after")
    def _check_time_column(self) -> Self:
        if isinstance(self.time_column, int) and self.time_column < 0:
            raise ValueError(f"time_column {self.time_column} must be >= 0 (counted from 0)")
        return self


class MicSourceConfig(_Model):
    """A live audio input through PortAudio (sounddevice): a microphone or an interface."""

    kind: Literal["mic"] = "mic"
    device: str | int | None = Field(
        None,
        description="Input device: an index, or a part of its name (`streamer devices` lists "
        "them); unset for the system's default input.",
    )
    rate: int = Field(48_000, ge=1_000, le=768_000, description="Sample rate, Hz.")
    channels: int = Field(1, ge=1, le=64, description="Channel count.")
    latency: Literal["low", "high"] | float = Field(
        "low",
        description="PortAudio input latency: 'low', 'high' or seconds. Through PulseAudio "
        "'high' means buffers of most of a second, delivered in bursts.",
    )
    stall_timeout_s: float = Field(
        2.0,
        gt=0,
        description="No audio for this long (beyond one block) counts as a lost device.",
    )
    retry_initial_s: float = Field(
        0.5, gt=0, description="First wait before reopening a lost device, seconds."
    )
    retry_max_s: float = Field(
        10.0, gt=0, description="Longest wait between reopening attempts (the back-off doubles)."
    )


class ZmqSourceConfig(_Model):
    """Frames published by another program (or another streamer) in the wire format."""

    kind: Literal["zmq"] = "zmq"
    endpoint: str = Field("tcp://127.0.0.1:5556", description="Where to connect (or bind).")
    socket: Literal["sub", "pull"] = Field(
        "sub", description="SUB to a publisher's topic, or PULL from pushers."
    )
    bind: bool = Field(False, description="Bind the endpoint instead of connecting to it.")
    topic: str = Field(
        "audio/", description="SUB only: the topic prefix to take (e.g. 'audio/pump1')."
    )
    rate: int = Field(48_000, ge=1, le=768_000, description="Expected sample rate, Hz.")
    channels: int = Field(1, ge=1, le=1024, description="Expected channel count.")
    max_message_bytes: int = Field(
        16 << 20, ge=1024, description="Larger messages are refused by the socket itself."
    )
    curve_server_key: ConfigPath | None = Field(
        None, description="The publisher's public key file, when it encrypts with CURVE."
    )
    curve_secret_key: ConfigPath | None = Field(
        None, description="This client's secret key file (its public half is on the sender)."
    )
    local_clock: bool = Field(
        True,
        description="The sender's captured_ns is this host's monotonic clock (a sender on "
        "the same machine): end-to-end latency spans the whole chain. False: blocks are "
        "stamped on arrival.",
    )


SourceConfig = Annotated[
    SynthSourceConfig | FileSourceConfig | MicSourceConfig | ZmqSourceConfig,
    Field(discriminator="kind"),
]

# ---------------------------------------------------------------------- stages

FirDesign = Literal["lowpass", "highpass", "bandpass", "bandstop"]


class FirConfig(_Model):
    """An FIR filter, exact at any block size; taps from a firwin design or a file."""

    kind: Literal["fir"] = "fir"
    name: str | None = Field(None, description="Label in metrics; defaults to the kind.")
    design: FirDesign = Field("bandpass", description="scipy.signal.firwin response type.")
    cutoff_hz: float | tuple[float, float] = Field(
        (150.0, 7000.0),
        description="Cutoff, Hz: one value for lowpass/highpass, [low, high] for band designs.",
    )
    numtaps: int = Field(
        511, ge=1, le=1 << 22, description="Filter length; odd for highpass and bandstop."
    )
    window: str | tuple[str, float] = Field(
        "hamming",
        description='firwin window: a name, or [name, parameter] such as ["kaiser", 8.6].',
    )
    taps_file: ConfigPath | None = Field(
        None,
        description=(
            "Taps from a file instead of a design: .npy, .txt or .csv (1-D, or one row per "
            "channel), "
            "or an audio file holding an impulse response (one channel per channel)."
        ),
    )
    algorithm: Literal["auto", "overlap-save", "partitioned", "nonuniform"] = Field(
        "auto",
        description=(
            "Convolution algorithm: auto (a cost model picks from numtaps, block size and "
            "channels), overlap-save (one FFT per block), partitioned (uniform partitions of "
            "the block size) or nonuniform (partitions growing along the filter). All give the "
            "same output with no added latency; see docs/fir.md."
        ),
    )
    fft_workers: int = Field(
        1,
        ge=1,
        le=256,
        description=(
            "Threads for the large transforms (scipy.fft, FFTW or the compiled levels'); "
            "used only for multi-channel transforms large enough to gain from them "
            "(>= 2**17 values)."
        ),
    )
    precision: Literal["float64", "float32"] = Field(
        "float64",
        description=(
            "Type the FFTs compute in: float64 (exact to float32 rounding whatever the "
            "signal) or float32 (faster for many channels; error relative to the input "
            "level, see docs/fir.md)."
        ),
    )
    fft_library: Literal["auto", "scipy", "pyfftw"] = Field(
        "auto",
        description=(
            "numpy backend: who computes the transforms longer than numpy's: auto takes "
            "pyFFTW (FFTW, 3-5x faster for long filters; GPL) when it is installed, else "
            "scipy.fft."
        ),
    )
    kernel: Literal["auto", "numba", "numpy"] = Field(
        "auto",
        description=(
            "numpy backend, partitioned algorithms: who runs the per-block path: numba "
            "(compiled, ~2x faster for short blocks; auto takes it when it is installed) "
            "or numpy calls. The output is the same."
        ),
    )
    backend: Literal["numpy", "torch"] = Field(
        "numpy",
        description=(
            "numpy (every algorithm, fastest for a few channels) or torch (the partitioned "
            "algorithm on the CPU or a GPU, for many channels and long filters)."
        ),
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="backend = torch: where the filter runs; cuda needs a CUDA GPU."
    )

    @model_validator(mode="after")
    def _check_backend(self) -> Self:
        if self.backend == "numpy" and self.device != "cpu":
            raise ValueError(f"device = {self.device!r} needs backend = 'torch'")
        if self.backend == "torch" and self.kernel != "auto":
            raise ValueError(f"kernel = {self.kernel!r} is the numpy backend's choice")
        if self.backend == "torch" and self.algorithm not in ("auto", "partitioned"):
            raise ValueError(
                f"backend = 'torch' runs the partitioned algorithm, not {self.algorithm!r}"
            )
        return self

    @model_validator(mode="after")
    def _check_design(self) -> Self:
        if self.taps_file is not None:
            clash = self.model_fields_set & {"design", "cutoff_hz", "numtaps", "window"}
            if clash:
                raise ValueError(
                    f"give either taps_file or a design, not both (also set: {sorted(clash)})"
                )
            return self
        band = self.design in ("bandpass", "bandstop")
        if band != isinstance(self.cutoff_hz, tuple):
            want = "[low, high]" if band else "a single frequency"
            raise ValueError(f"cutoff_hz for a {self.design} must be {want}")
        if isinstance(self.cutoff_hz, tuple):
            low, high = self.cutoff_hz
            if not 0 < low < high:
                raise ValueError(f"cutoff_hz {list(self.cutoff_hz)} must satisfy 0 < low < high")
        elif self.cutoff_hz <= 0:
            raise ValueError(f"cutoff_hz {self.cutoff_hz} must be > 0")
        if self.design in ("highpass", "bandstop") and self.numtaps % 2 == 0:
            raise ValueError(f"a {self.design} needs an odd numtaps, got {self.numtaps}")
        return self


BandsHz = tuple[tuple[float, float], ...]


class AnomalyConfig(_Model):
    """A classical spectral anomaly detector: audio passes through, events annotate the blocks."""

    kind: Literal["anomaly"] = "anomaly"
    name: str | None = Field(None, description="Label in metrics; defaults to the kind.")
    frame_ms: float = Field(
        21.33,
        gt=0.5,
        le=1000.0,
        description="STFT frame length, ms (21.33 ms is 1024 samples at 48 kHz); sets the "
        "frequency resolution and most of the detection delay.",
    )
    hop_ratio: Literal[2, 4, 8] = Field(
        4, description="Frames overlap: hop = frame / hop_ratio (5.3 ms by default)."
    )
    window: str = Field("hann", description="scipy.signal.get_window name of the STFT window.")
    bands: Literal["log", "explicit"] = Field(
        "log",
        description="log: n_bands log-spaced bands from fmin_hz to fmax_hz; explicit: bands_hz.",
    )
    n_bands: int = Field(24, ge=1, le=256, description="Number of log-spaced bands.")
    fmin_hz: float = Field(50.0, gt=0, description="Low edge of the lowest log band, Hz.")
    fmax_hz: float | None = Field(
        None, gt=0, description="High edge of the highest log band, Hz; unset: 0.45 x rate."
    )
    bands_hz: BandsHz | None = Field(
        None, description="Explicit bands as [[low, high], ...] in Hz (bands = 'explicit')."
    )
    baseline_tau_s: float = Field(
        10.0,
        gt=0,
        description="Time constant of the background baseline (per band and bin), s; frames "
        "inside events or pending onsets are not learned.",
    )
    warmup_s: float = Field(
        2.0, ge=0, description="Seconds from the stream start that only train the baseline."
    )
    z_threshold: float = Field(
        5.0, gt=0, description="Band level and tonal detectors: rise in baseline std units."
    )
    level_db: float = Field(
        6.0, gt=0, description="Band level detector: smallest rise above the baseline, dB."
    )
    tonal_db: float = Field(
        15.0,
        gt=0,
        description="Tonal detector: smallest narrowband rise of a spectral line above the "
        "learned background and its neighbourhood, dB.",
    )
    dropout_db: float = Field(
        20.0, gt=0, description="Dropout detector: broadband level drop below the baseline, dB."
    )
    impulse_ratio: float = Field(
        3.0,
        gt=1,
        description="Impulsive detector: kurtosis of the frame, whitened by the learned "
        "background spectrum, over its baseline kurtosis.",
    )
    on_threshold: float = Field(
        1.0, gt=0, description="Normalised score (1 = a detector at its threshold) for onset."
    )
    off_threshold: float = Field(
        0.6, gt=0, description="Normalised score below which an event may end (hysteresis)."
    )
    min_duration_s: float = Field(
        0.01,
        ge=0,
        description="The score must stay at or above on_threshold this long for an onset, s; "
        "also lets the most specific detector name the event (a dropout's hard edge first "
        "looks impulsive).",
    )
    merge_gap_s: float = Field(
        0.3,
        ge=0,
        description="An event ends after its score stayed below off_threshold this long; "
        "closer recurrences (a click train) stay one event.",
    )
    refractory_s: float = Field(
        0.2, ge=0, description="No new onset on a channel this long after an offset, s."
    )
    relearn_after_s: float = Field(
        30.0,
        gt=0,
        description="An event longer than this lets the baseline learn again, so a lasting "
        "change becomes the new normal.",
    )
    spectrum_rate_hz: float = Field(
        0.0, ge=0, le=1000, description="Band spectra on spectrum/STREAM per second; 0 = off."
    )
    model: ModelRef | None = Field(
        None,
        description="A learned model of normal operation: a shipped name ('demo-pump') or an "
        ".npz from tools/train_anomaly.py; its reconstruction error joins the detectors as "
        "'learned', on frames of the model's own length. The stream's rate must be the "
        "model's.",
    )
    model_z: float | None = Field(
        None,
        gt=0,
        description="Threshold of the learned detector, in held-out standard deviations of its "
        "error; unset: the model card's.",
    )
    classical: bool = Field(
        True, description="Run the classical detectors; false leaves the learned model alone."
    )

    @model_validator(mode="after")
    def _check_bands(self) -> Self:
        if self.off_threshold > self.on_threshold:
            raise ValueError(
                f"off_threshold {self.off_threshold} must not exceed on_threshold "
                f"{self.on_threshold}"
            )
        if self.bands == "explicit":
            if not self.bands_hz:
                raise ValueError("bands = 'explicit' needs bands_hz = [[low, high], ...]")
            for lo, hi in self.bands_hz:
                if not 0 <= lo < hi:
                    raise ValueError(f"band [{lo}, {hi}] must satisfy 0 <= low < high")
        elif self.bands_hz is not None:
            raise ValueError("bands_hz needs bands = 'explicit'")
        if self.fmax_hz is not None and self.fmax_hz <= self.fmin_hz:
            raise ValueError(f"fmax_hz {self.fmax_hz} must be above fmin_hz {self.fmin_hz}")
        if not self.classical and self.model is None:
            raise ValueError("classical = false needs a learned model (model = ...)")
        return self


CLASSICAL_FLOOR_DB = 15.0
LEARNED_FLOOR_DB = 30.0
_CLASSICAL_ONLY = ("frame_ms", "hop_ratio", "noise_window_s", "speech_ratio", "dd_alpha")
_LEARNED_ONLY = ("model", "device")


class DenoiseConfig(_Model):
    """A spectral denoiser: a Wiener gain against a noise floor tracked as the stream runs."""

    kind: Literal["denoise"] = "denoise"
    name: str | None = Field(None, description="Label in metrics; defaults to the kind.")
    method: Literal["classical", "learned"] = Field(
        "classical",
        description="classical: decision-directed Wiener gain over an MCRA noise tracker "
        "(no training, any signal, sensors included). learned: a causal GRU predicting "
        "per-band gains (model), 20 ms frames, trained on speech in many noises.",
    )
    model: ModelRef = Field(
        "denoise-speech",
        description="method = learned: a shipped model's name or an .npz from "
        "tools/train_denoiser.py.",
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="method = learned: where the network runs (torch)."
    )
    frame_ms: float = Field(
        16.0,
        gt=1.0,
        le=500.0,
        description="STFT frame, ms; the stage's latency is one frame (less one sample).",
    )
    hop_ratio: Literal[2, 4] = Field(
        2, description="Frames overlap: hop = frame / hop_ratio (sqrt-Hann analysis and synthesis)."
    )
    max_attenuation_db: float | None = Field(
        None,
        ge=0.0,
        le=60.0,
        description="Gain floor, dB below unity: deeper removes more noise and risks "
        "'musical' residue (classical) or clipped word endings (learned). Unset: "
        f"{CLASSICAL_FLOOR_DB:g} dB classical, {LEARNED_FLOOR_DB:g} dB learned.",
    )
    noise_window_s: float = Field(
        1.5,
        gt=0.05,
        le=30.0,
        description="Window of the noise floor's minimum tracking: longer than a word or "
        "a machine's quiet-loud cycle, so that they are not taken for noise.",
    )
    speech_ratio: float = Field(
        5.0,
        gt=1.0,
        le=100.0,
        description="Power over the tracked minimum above which a bin counts as signal "
        "(MCRA's delta), so that the noise estimate stops learning there.",
    )
    dd_alpha: float = Field(
        0.98,
        ge=0.0,
        lt=1.0,
        description="Decision-directed smoothing of the a-priori SNR: near 1 suppresses "
        "musical noise at the cost of some smearing of onsets.",
    )

    @model_validator(mode="after")
    def _check_method_keys(self) -> Self:
        """Keys of the other method are refused rather than silently ignored."""
        other = _LEARNED_ONLY if self.method == "classical" else _CLASSICAL_ONLY
        given = sorted(set(other) & self.model_fields_set)
        if given:
            raise ValueError(
                f"{', '.join(given)} do(es) not apply to method = {self.method!r}"
                + (" (the learned model's frames are 20 ms)" if self.method == "learned" else "")
            )
        return self

    @property
    def floor_db(self) -> float:
        """The gain floor in use, dB below unity."""
        if self.max_attenuation_db is not None:
            return self.max_attenuation_db
        return CLASSICAL_FLOOR_DB if self.method == "classical" else LEARNED_FLOOR_DB


class ResampleConfig(_Model):
    """A sample-rate change by a polyphase FIR (scipy's resample_poly design), streamed exactly."""

    kind: Literal["resample"] = "resample"
    name: str | None = Field(None, description="Label in metrics; defaults to the kind.")
    rate: int = Field(..., ge=1, le=768_000, description="Output sample rate, Hz.")
    window: str | tuple[str, float] = Field(
        ("kaiser", 5.0),
        description="firwin window of the anti-aliasing filter, as scipy.signal.resample_poly "
        'uses: a name, or [name, parameter] such as ["kaiser", 5.0].',
    )
    half_taps: int = Field(
        10,
        ge=1,
        le=100,
        description="Filter half-length per max(up, down) (resample_poly uses 10): longer is "
        "steeper and adds latency.",
    )


StageConfig = Annotated[
    FirConfig | AnomalyConfig | DenoiseConfig | ResampleConfig, Field(discriminator="kind")
]

# ----------------------------------------------------------- pipeline and sinks


class PipelineConfig(_Model):
    """Block size, the capture queue and reporting."""

    block: int = Field(256, ge=1, le=1 << 20, description="Frames per block.")
    queue_blocks: int = Field(
        32, ge=1, le=100_000, description="Capacity of the source-to-processing queue, blocks."
    )
    overflow: Literal["drop-oldest", "drop-newest"] = Field(
        "drop-oldest",
        description="What a live source does when processing falls behind; drops are counted.",
    )
    on_stage_error: Literal["stop", "skip"] = Field(
        "stop",
        description="A stage that raises on a block: stop the stream with the error, or drop "
        "that block (counted, logged) and reset the stage so its state is clean.",
    )
    status_interval_s: float = Field(5.0, gt=0, description="Seconds between status log lines.")
    heartbeat_s: float = Field(
        1.0, gt=0, description="Seconds between status/ messages (the daemon's heartbeat)."
    )


def _is_loopback_endpoint(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PublishConfig(_Model):
    """The ZeroMQ PUB socket (wire format: docs/wire-format.md)."""

    enabled: bool | None = Field(
        None, description="Publish at all; unset means on for `streamer run`, off for replay."
    )
    endpoint: str = Field("tcp://127.0.0.1:5555", description="Where the PUB socket binds.")
    allow_insecure: bool = Field(
        False, description="Allow binding to a non-loopback address without encryption."
    )
    curve_secret_key: ConfigPath | None = Field(
        None,
        description="The server's secret key file (`streamer keys`): encrypt with CURVE. "
        "Needs curve_clients.",
    )
    curve_clients: ConfigPath | None = Field(
        None, description="Folder of the public key files of the subscribers allowed in."
    )
    audio: bool = Field(True, description="Publish processed audio on audio/STREAM.")
    metrics: bool = Field(True, description="Publish per-block metrics on metrics/STREAM.")
    queue_messages: int = Field(
        4096, ge=1, description="Messages waiting for the socket before new ones are dropped."
    )
    sndhwm: int = Field(10_000, ge=1, description="ZeroMQ send high-water mark, messages.")

    @model_validator(mode="after")
    def _check_endpoint(self) -> Self:
        if not self.endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(
                f"endpoint {self.endpoint!r} must start with tcp://, ipc:// or inproc://"
            )
        if (self.curve_secret_key is None) != (self.curve_clients is None):
            raise ValueError("CURVE needs both curve_secret_key and curve_clients")
        secure = self.curve_secret_key is not None
        if not (secure or self.allow_insecure or _is_loopback_endpoint(self.endpoint)):
            raise ValueError(
                f"endpoint {self.endpoint!r} is not loopback; binding it needs CURVE keys "
                "(curve_secret_key and curve_clients, made by `streamer keys`) or "
                "allow_insecure = true"
            )
        return self


class PrometheusConfig(_Model):
    """An HTTP endpoint for Prometheus to scrape (off by default)."""

    enabled: bool = Field(False, description="Serve /metrics over HTTP.")
    address: str = Field("127.0.0.1", description="Address to bind; loopback by default.")
    port: int = Field(9464, ge=0, le=65535, description="TCP port (0 picks a free one).")


class OutputConfig(_Model):
    """Where processed audio goes besides the wire: a file, a speaker to listen on."""

    wav: ConfigPath | None = Field(
        None, description="Write processed audio here (32-bit float WAV)."
    )
    events: ConfigPath | None = Field(
        None, description="Write anomaly events here, one JSON object per line."
    )
    event_audio: bool = Field(
        False,
        description="Also save the audio around each event as a WAV beside the events "
        "file (STEM.eventID-STARTs.wav), named in the event's lines as audio_file.",
    )
    event_pre_roll_s: float = Field(
        1.0, ge=0, le=60, description="Audio kept before an event's start, s."
    )
    event_post_roll_s: float = Field(
        0.5, ge=0, le=60, description="Audio kept after an event's end, s."
    )
    event_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest event clip, s (pre-roll included)."
    )
    monitor: bool = Field(
        False, description="Play processed audio on an output device, for listening in."
    )
    monitor_device: str | int | None = Field(
        None, description="Output device (index or part of a name); unset for the default."
    )
    monitor_buffer_blocks: int = Field(
        8, ge=2, le=1024, description="Blocks the monitor may hold before it drops new ones."
    )

    @model_validator(mode="after")
    def _check_event_audio(self) -> Self:
        if self.event_audio and self.events is None:
            raise ValueError("event_audio needs events = PATH (the clips are written beside it)")
        return self


def _default_stages() -> list[StageConfig]:
    """Every stage the synth scene needs none of a model for: its band-pass, then anomaly
    detection watching what the band-pass leaves, with band levels allowed the ~10 dB
    swings of the scene's speech-like bursts (config/default.toml spells it out)."""
    anomaly = AnomalyConfig(
        n_bands=16, fmin_hz=100.0, fmax_hz=8000.0, level_db=10.0, spectrum_rate_hz=10.0
    )
    return [FirConfig(), anomaly]


_STREAM_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class StreamConfig(_Model):
    """One stream of a daemon that serves several (``[streams.NAME]``): what a
    single-stream file says at top level, but for the socket and the metrics
    endpoint, which the streams share."""

    source: SourceConfig = Field(default_factory=SynthSourceConfig)
    stages: list[StageConfig] = Field(default_factory=_default_stages)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)


# The top-level sections that [streams.NAME] tables hold instead.
_PER_STREAM: Final = tuple(StreamConfig.model_fields)


class Config(_Model):
    """One stream: its source, ordered stages, pipeline settings and sinks; or, with
    ``streams``, several, each with its own, sharing ``publish`` and ``prometheus``."""

    stream: str = Field(
        "main",
        pattern=_STREAM_NAME,
        description="Stream name, used in wire topics (audio/NAME).",
    )
    source: SourceConfig = Field(default_factory=SynthSourceConfig)
    stages: list[StageConfig] = Field(default_factory=_default_stages)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    streams: dict[Annotated[str, Field(pattern=_STREAM_NAME)], StreamConfig] | None = Field(
        None,
        description="Several streams in one daemon, by name (their topics: audio/NAME, ...); "
        "each has its own source, stages, pipeline and output, and they share the socket.",
    )

    @model_validator(mode="after")
    def _check_streams(self) -> Self:
        if self.streams is None:
            return self
        if not self.streams:
            raise ValueError("streams is empty: name at least one [streams.NAME]")
        both = [key for key in ("stream", *_PER_STREAM) if key in self.model_fields_set]
        if both:
            raise ValueError(
                f"with [streams.NAME] tables, {', '.join(both)} belong inside each stream, "
                "not at top level"
            )
        return self

    def one_stream(self, name: str | None = None) -> Config:
        """The single stream a command that takes one works on (replay, bench): this
        config, or its stream ``name``, or its only stream.

        Raises
        ------
        ConfigError
            ``name`` is not one of the streams, or there are several and no ``name``.
        """
        configs = {c.stream: c for c in self.stream_configs()}
        if name is None and len(configs) == 1:
            return next(iter(configs.values()))
        if name is not None and name in configs:
            return configs[name]
        listed = ", ".join(configs)
        if name is None:
            raise ConfigError(f"the config lists streams {listed}: pick one with --stream")
        raise ConfigError(f"no stream {name!r} in the config (it has {listed})", key="streams")

    def stream_configs(self) -> list[Config]:
        """One single-stream config per stream (just this one without ``streams``)."""
        if self.streams is None:
            return [self]
        return [
            self.model_copy(update={"stream": name, "streams": None, **dict(stream)})
            for name, stream in self.streams.items()
        ]


# ------------------------------------------------------------------- loading


_UNION_TAGS = frozenset({"synth", "file", "mic", "zmq", "fir", "anomaly", "denoise", "resample"})


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``('stages', 0, 'fir', 'numtaps')`` -> ``stages[0].numtaps`` (union tags dropped)."""
    out = ""
    for part in loc:
        if part in _UNION_TAGS:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        return f"unknown kind {ctx.get('tag')!r} (expected one of: {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "missing 'kind'"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _config_error(exc: ValidationError, path: Path | None) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    reason = _describe(first)
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ConfigError(reason, key=_key_path(first["loc"]) or None, path=path)


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_TAGGED_DEFAULTS: dict[str, Any] = {
    "source": {"kind": "synth"},
    "stages": [
        {"kind": stage.kind, **stage.model_dump(mode="json", exclude_defaults=True)}
        for stage in _default_stages()
    ],
}


def apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``STREAMER__A__B=value`` variables onto the raw config mapping."""
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        node: Any = raw
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"no list item {key!r} to override", key=name)
                if last:
                    node[int(key)] = _env_value(text)
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = _env_value(text)
                else:
                    if node is raw and key not in node and key in _TAGGED_DEFAULTS:
                        # Overriding inside a defaulted source or stage list starts from
                        # the default, whose kind tag the union needs.
                        node[key] = _deep_copy(_TAGGED_DEFAULTS[key])
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(f"cannot override inside a {type(node).__name__}", key=name)
    return raw


def parse_config(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a raw mapping (from TOML) into a `Config`, environment applied.

    Raises
    ------
    ConfigError
        Naming the file, the key's path and the reason.
    """
    data = apply_env(_deep_copy(raw), os.environ if environ is None else environ)
    context = {"base_dir": path.parent} if path is not None else {}
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        raise _config_error(exc, path) from exc


def load_config(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; ``None`` gives the embedded default."""
    if path is None:
        return parse_config({}, environ=environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from exc
    return parse_config(raw, path=path, environ=environ)


def load_stream(
    path: Path | None, name: str | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """`load_config`, then `Config.one_stream`: for the commands that run one stream."""
    cfg = load_config(path, environ=environ)
    try:
        return cfg.one_stream(name)
    except ConfigError as exc:
        exc.path = path
        raise


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def with_overrides(
    cfg: Config, updates: Mapping[str, Any], *, replace: Mapping[str, Any] | None = None
) -> Config:
    """A new config with ``updates`` (a nested mapping) merged in and validated again.

    Top-level sections in ``replace`` are swapped whole (a synth source for a
    file source). Only the fields the user set are carried over, so defaults
    and either-or choices (``taps_file`` or a design) stay as they were.
    """
    merged = cfg.model_dump(exclude_unset=True)
    # Kind tags are kept even when defaulted: the unions cannot be validated without them.
    merged.setdefault("source", {}).setdefault("kind", cfg.source.kind)
    if "stages" in merged:
        for dumped, stage in zip(merged["stages"], cfg.stages, strict=True):
            dumped.setdefault("kind", stage.kind)
    merged.update(_deep_copy(dict(replace or {})))
    _merge(merged, updates)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(exc, None) from exc


def _merge(base: dict[str, Any], updates: Mapping[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = _deep_copy(value)
