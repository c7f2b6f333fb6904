"""ACE-Step music jobs through the worker and handler.py, on the tiny random ACE-Step the project generates.

Every file is read back with soundfile (it reads WAV, FLAC and MP3), never with the code that wrote it.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from worker.config import Settings
from worker.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
LATENT_HZ = 25  # ACE-Step's VAE: 25 latent frames per second, whatever the sample rate
SONG = {"type": "music", "model": "ace-step", "lyrics": "[Verse]\nthe sun creeps in\n[Chorus]\nla la la",
        "tags": ["piano", "happy"], "duration_s": 0.4}  # fmt: skip


PROGRESS: dict[str, list[dict[str, Any]]] = {}  # job id -> the progress payloads it sent
CANCEL_ON_PROGRESS: dict[str, threading.Event] = {}  # job id -> set at its first progress report


@pytest.fixture(scope="module")
def ace_worker(session_volume: Path) -> Worker:
    def sink(job: dict[str, Any], payload: dict[str, Any]) -> None:
        PROGRESS.setdefault(job["id"], []).append(payload)
        if job["id"] in CANCEL_ON_PROGRESS:
            CANCEL_ON_PROGRESS[job["id"]].set()

    settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("music",),
                        music_models=("ace-step",), progress_interval_s=0)  # fmt: skip
    return Worker(settings, progress_sink=sink).start()


def song(worker: Worker, job_id: str, **fields: Any) -> dict[str, Any]:
    result = worker.handle_sync({"id": job_id, "input": {**SONG, **fields}})
    assert "error" not in result, result
    return result


def wav_bytes(seconds: float, rate: int, channels: int = 1, fmt: str = "WAV") -> bytes:
    """A sine chord, as a song to cover."""
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 330 * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.repeat(tone[:, None], channels, axis=1).astype(np.float32), rate, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(data).decode()


def decoded(output: dict[str, Any]) -> tuple[np.ndarray, int]:
    return soundfile.read(output["path"], always_2d=True, dtype="float32")


def test_handler_test_input_writes_the_song(session_volume: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VOLUME_ROOT": str(session_volume), "MODEL_PROFILE": "tiny", "WORKER_JOBS": "music",
           "MUSIC_MODELS": "ace-step", "JOB_DATA_DIR": str(tmp_path / "job_data")}  # fmt: skip
    job = {"input": {**SONG, "seed": 5, "format": "flac"}}
    done = subprocess.run([sys.executable, str(ROOT / "handler.py"), "--test_input", json.dumps(job)],
                          check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "job_data" / "local_test" / "result.json").read_text())
    assert (result["model"], result["task"], result["seeds"]) == ("ace-step", "text2music", [5])
    audio, rate = decoded(result["outputs"][0])
    assert rate == result["sample_rate"] == result["outputs"][0]["sample_rate"]
    # 0.4 s is 10 latent frames; the VAE gives rate / 25 samples per frame
    assert audio.shape == (10 * rate // LATENT_HZ, 2) and result["channels"] == 2
    assert result["duration_s"] == pytest.approx(0.4, abs=1e-3)
    assert 0.0 < np.abs(audio).max() <= 1.0
    assert {"generate_s", "rtf"} <= set(result["metrics"])


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_formats_read_back_at_the_engine_rate(ace_worker: Worker, fmt: str) -> None:
    result = song(ace_worker, f"ace-{fmt}", format=fmt, seed=3)
    output = result["outputs"][0]
    assert Path(output["path"]).name == f"song.{fmt}"
    info = soundfile.info(output["path"])
    expected_format = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}[fmt]
    assert (info.format, info.samplerate, info.channels) == (expected_format, result["sample_rate"], 2)
    samples = round(0.4 * result["sample_rate"])
    if fmt == "mp3":
        assert info.frames >= samples  # mp3 pads to whole frames
    else:
        assert info.frames == samples


def test_batch_one_output_each_and_reproducible_seeds(ace_worker: Worker) -> None:
    batch = song(ace_worker, "ace-batch", batch=3, seed=40)
    assert batch["seeds"] == [40, 41, 42] == [o["seed"] for o in batch["outputs"]]
    assert [Path(o["path"]).name for o in batch["outputs"]] == ["song_00.wav", "song_01.wav", "song_02.wav"]
    assert len({o["sha256"] for o in batch["outputs"]}) == 3
    again = song(ace_worker, "ace-batch-again", batch=3, seed=40)
    assert [o["sha256"] for o in again["outputs"]] == [o["sha256"] for o in batch["outputs"]]
    # a batch's second song is the song of its own seed: the same noise, up to batched arithmetic
    alone = song(ace_worker, "ace-alone", seed=41)
    assert np.allclose(decoded(alone["outputs"][0])[0], decoded(batch["outputs"][1])[0], atol=2e-3)


def test_progress_every_step_and_cancel_between_steps(ace_worker: Worker) -> None:
    song(ace_worker, "ace-progress", steps=4, seed=1)
    assert [(p["step"], p["total"], p["phase"]) for p in PROGRESS["ace-progress"]] == [
        (step, 4, "diffusion") for step in range(1, 5)
    ]
    cancel = CANCEL_ON_PROGRESS["ace-cancel"] = threading.Event()
    result = ace_worker.handle_sync({"id": "ace-cancel", "input": {**SONG, "steps": 8}}, cancel)
    assert result["error"].startswith("cancelled"), result
    assert len(PROGRESS["ace-cancel"]) == 1  # stopped right after the step that reported
    assert not (ace_worker.store.root / "ace-cancel").exists()


def test_cover_of_a_reference_song(ace_worker: Worker, session_volume: Path) -> None:
    """A 44.1 kHz mono WAV, on the volume or inline, resampled to the engine's rate and trimmed to duration_s (the
    URL test below covers a reference's own length); the same seed covers the same; its strength changes it."""
    uploads = session_volume / "uploads"
    uploads.mkdir(exist_ok=True)
    (uploads / "reference.wav").write_bytes(wav_bytes(1.2, 44100))
    cover = {
        "task": "cover",
        "reference_audio": "/runpod-volume/uploads/reference.wav",
        "seed": 9,
        "duration_s": 0.4,
    }
    short = song(ace_worker, "ace-cover", **cover)
    assert short["task"] == "cover" and short["duration_s"] == pytest.approx(0.4, abs=0.05)
    assert short["cover"] == "structure+timbre"  # the tiny model carries the audio codec
    inline = song(
        ace_worker, "ace-cover-inline", **{**cover, "reference_audio": data_uri(wav_bytes(1.2, 44100))}
    )
    assert inline["outputs"][0]["sha256"] == short["outputs"][0]["sha256"]
    weaker = song(ace_worker, "ace-cover-weak", **cover, cover_strength=0.3)
    assert weaker["outputs"][0]["sha256"] != short["outputs"][0]["sha256"]


def _flac_with_unknown_length(seconds: float) -> bytes:
    """Silence as FLAC (a few KB for minutes) whose STREAMINFO says "length unknown": only the read can tell."""
    data = bytearray(_silence_flac(seconds))
    # STREAMINFO body starts at byte 8; its total-samples field is the low 36 bits of bytes 18-25
    packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def _silence_flac(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((int(seconds * 8000), 1), np.float32), 8000, format="FLAC")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: base64.b64encode(b"this is not audio" * 40).decode(), "not readable WAV, FLAC, MP3 or OGG"),
        (lambda: data_uri(b""), "the audio is empty"),
        (lambda: data_uri(wav_bytes(0.02, 44100)), "0.02 s of audio, at least 0.1 s"),
        (lambda: data_uri(wav_bytes(0.5, 44100, channels=3)), "3 channels, send mono or stereo"),
        (lambda: data_uri(_silence_flac(601)), "601.0 s is longer than the 600 s limit"),
        (
            lambda: data_uri(_flac_with_unknown_length(601)),
            "reference_audio: longer than the 600 s limit",
        ),
        (lambda: "A" * (28 * 1024 * 1024), "over the 20971520-byte limit"),
        (lambda: "http://127.0.0.1:9/song.wav", "host '127.0.0.1' resolves to a private"),
        (lambda: "/runpod-volume/uploads/missing.wav", "no file"),
    ],
    ids=[
        "not-audio",
        "empty",
        "too-short",
        "channels",
        "too-long",
        "flac-bomb",
        "too-big",
        "private-url",
        "missing",
    ],
)
def test_bad_reference_audio_is_a_field_error(ace_worker: Worker, make: Any, expected: str) -> None:
    job = {**SONG, "task": "cover", "reference_audio": make()}
    result = ace_worker.handle_sync({"id": "ace-bad-audio", "input": job})
    assert result["error"].startswith("reference_audio: ") and expected in result["error"], result["error"][
        :300
    ]
    assert not (ace_worker.store.root / "ace-bad-audio").exists()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"topk": 20}, "topk: only for model 'heartmula', 'ace-step' takes steps, guidance, batch"),
        ({"cfg_scale": 2.0, "codec_steps": 4}, "cfg_scale: only for model 'heartmula'"),
        (
            {"model": "heartmula", "steps": 4},
            "steps: only for model 'ace-step', 'heartmula' takes temperature",
        ),
        ({"model": "heartmula", "reference_audio": "x.wav"}, "reference_audio: only for model 'ace-step'"),
        ({"model": "heartmula", "duration_s": 400}, "duration_s: at most 360 s for heartmula"),
        ({"duration_s": 601}, "duration_s: Input should be less than or equal to 600"),
        ({"task": "cover"}, "reference_audio: required for task 'cover'"),
        ({"reference_audio": "x.wav"}, "reference_audio: only for task 'cover'"),
        ({"cover_strength": 0.5}, "cover_strength: only for task 'cover'"),
        ({"batch": 9}, "batch: Input should be less than or equal to 8"),
        ({"guidance": 3.0}, "guidance: this turbo model has guidance built in"),
        ({"lyrics": "la " * 1200}, "lyrics: 3624 tokens, ACE-Step reads at most 2048"),
        ({"model": "ace step"}, "model: Input should be 'heartmula' or 'ace-step'"),
    ],
)
def test_engine_fields_are_refused_for_the_other_engine(
    ace_worker: Worker, fields: dict[str, Any], expected: str
) -> None:
    result = ace_worker.handle_sync({"id": "ace-bad-field", "input": {**SONG, **fields}})
    assert result["error"].startswith(expected), result
    assert not (ace_worker.store.root / "ace-bad-field").exists()


def test_the_other_engine_loads_on_its_first_job_and_both_stay(ace_worker: Worker) -> None:
    music = ace_worker.pipeline("music")
    assert set(music.engines) >= {"ace-step"}
    heartmula = ace_worker.handle_sync({"id": "ace-then-heartmula", "input": {
        "type": "music", "lyrics": "[Verse]\nhello", "tags": "piano", "duration_s": 0.2, "codec_steps": 1, "seed": 2,
    }})  # fmt: skip
    assert "error" not in heartmula, heartmula
    assert heartmula["model"] == "heartmula" and heartmula["sample_rate"] == 48000
    assert set(music.engines) == {"ace-step", "heartmula"}
    song(ace_worker, "ace-after-heartmula", seed=2)


def test_music_models_setting() -> None:
    from worker.config import ConfigError

    assert Settings.from_env({}).music_models == ("heartmula",)
    assert Settings.from_env({"MUSIC_MODELS": "ace-step"}).music_models == ("ace-step",)
    assert Settings.from_env({"MUSIC_MODELS": "all"}).music_models == ("heartmula", "ace-step")
    with pytest.raises(ConfigError, match="MUSIC_MODELS: unknown music model"):
        Settings.from_env({"MUSIC_MODELS": "heartmula,acestep"})


def test_cover_of_a_reference_fetched_over_http(session_volume: Path) -> None:
    """A URL reference through worker.inputs' fetch (here on loopback, which ALLOW_PRIVATE_URLS permits)."""
    reference = wav_bytes(0.6, 22050, channels=2)

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(reference)))
            self.end_headers()
            self.wfile.write(reference)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("music",),
                            music_models=("ace-step",), allow_private_urls=True)  # fmt: skip
        worker = Worker(settings).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/song.wav"
        result = song(worker, "ace-cover-url", task="cover", reference_audio=url, duration_s=None, seed=4)
    finally:
        server.shutdown()
    assert result["duration_s"] == pytest.approx(0.6, abs=0.05)
    assert decoded(result["outputs"][0])[1] == result["sample_rate"]


def test_a_model_without_the_audio_codec_covers_the_timbre(ace_worker: Worker, tmp_path: Path) -> None:
    """The released turbo repo has no audio tokenizer: its covers condition on the reference's timbre alone."""
    from worker.audio_inputs import decode_audio
    from worker.pipelines.music_ace_step import AceStepEngine

    folder = tmp_path / "ace-step-without-codec"
    shutil.copytree(ace_worker.model_path("ace-step"), folder, ignore=shutil.ignore_patterns("cover"))
    engine = AceStepEngine.from_folder(folder, "cpu")
    assert engine.cover_mode == "timbre"
    reference = decode_audio(wav_bytes(0.6, 44100), "reference_audio", sample_rate=engine.sample_rate,
                             max_duration_s=600)  # fmt: skip
    steps: list[int] = []
    songs = engine.generate(lyrics="[Verse]\nla", tags="piano", duration_s=0.6, steps=2, guidance=None, seeds=[1],
                            reference=reference, cover_strength=1.0, on_step=lambda done, total: steps.append(done))  # fmt: skip
    assert songs.waveforms.shape == (1, 2, reference.shape[1]) and steps == [1, 2]
