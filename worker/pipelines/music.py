"""Lyrics and tags to a song with the native HeartMuLa implementation (`worker.music`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from worker.pipelines.base import JobCancelled, JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.schemas import JobInputError, MusicJob

_SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16", "mp3": "MPEG_LAYER_III"}


def write_audio(path: Path, waveform: Any, sample_rate: int, fmt: str) -> None:
    """Write a [channels, samples] float waveform with soundfile (torchaudio has no build for our torch)."""
    import numpy as np
    import soundfile

    samples = np.clip(np.asarray(waveform, dtype=np.float32).T, -1.0, 1.0)
    soundfile.write(path, samples, sample_rate, format=fmt.upper(), subtype=_SUBTYPES[fmt])


class MusicPipeline:
    job_type: ClassVar[str] = "music"

    def __init__(self) -> None:
        self.generator: Any = None

    def load(self, env: LoadEnv) -> None:
        from worker.music.generator import MusicGenerator

        self.generator = MusicGenerator.from_pretrained(env.models("heartmula"), device=env.device)

    def run(self, job: MusicJob, ctx: JobContext) -> PipelineOutput:
        from worker.music.generator import GenerationCancelled, GenerationInputError

        if job.duration_s > self.generator.max_duration_s:
            raise JobInputError(
                "duration_s", f"at most {self.generator.max_duration_s:g} s for this model's context"
            )
        seed = resolve_seed(job.seed)

        def on_progress(phase: str, done: int, total: int) -> None:
            ctx.progress(done, total, phase=phase)

        try:
            result = self.generator.generate(
                lyrics=job.lyrics,
                tags=job.tags,
                duration_s=job.duration_s,
                temperature=job.temperature,
                topk=job.topk,
                cfg_scale=job.cfg_scale,
                seed=seed,
                codec_steps=job.codec_steps,
                on_progress=on_progress,
                should_stop=ctx.cancel_event.is_set,
            )
        except GenerationCancelled as cancelled:
            raise JobCancelled(str(cancelled)) from cancelled
        except GenerationInputError as invalid:
            raise JobInputError(invalid.field, invalid.reason) from invalid
        ctx.check_cancelled()
        sample_rate = self.generator.sample_rate
        channels, samples = result.waveform.shape
        duration_s = samples / sample_rate
        audio = ctx.folder.write_with(
            f"song.{job.format}",
            lambda temp: write_audio(temp, result.waveform, sample_rate, job.format),
            kind="audio",
            sample_rate=sample_rate,
            channels=channels,
            duration_s=round(duration_s, 3),
        )
        compute_s = result.lm_s + result.codec_s
        return PipelineOutput(
            outputs=[audio],
            metrics={
                "frames": result.frames,
                "lm_s": round(result.lm_s, 3),
                "codec_s": round(result.codec_s, 3),
                "rtf": round(compute_s / duration_s, 4) if duration_s else 0.0,
            },
            fields={
                "seed": seed,
                "sample_rate": sample_rate,
                "channels": channels,
                "duration_s": round(duration_s, 3),
            },
        )
