"""Lyrics and tags to a song, with the engine the job names: native HeartMuLa (`worker.music`) or ACE-Step 1.5
(`worker.pipelines.music_ace_step`).

Both engines can be resident at once: `MUSIC_MODELS` are loaded with the pipeline, any other engine on its first
job, through the model cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from worker.audio_inputs import load_audio
from worker.inputs import InputLimits
from worker.pipelines.base import JobCancelled, JobContext, LoadEnv, PipelineOutput, resolve_seed
from worker.schemas import JobInputError, MusicJob
from worker.schemas.music_job import DEFAULT_DURATION_S, MAX_DURATION_S

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
        self.engines: dict[str, Any] = {}
        self._env: LoadEnv | None = None

    def load(self, env: LoadEnv) -> None:
        self._env = env
        for name in env.settings.music_models:
            self.engine(name)

    def engine(self, name: str) -> Any:
        """The loaded engine `name` ("heartmula" or "ace-step"), loaded now if it is not resident yet."""
        if name not in self.engines:
            assert self._env is not None, "load() first"
            folder = self._env.models(name)
            if name == "ace-step":
                from worker.pipelines.music_ace_step import AceStepEngine

                self.engines[name] = AceStepEngine.from_folder(folder, self._env.device)
            else:
                from worker.music.generator import MusicGenerator

                self.engines[name] = MusicGenerator.from_pretrained(folder, device=self._env.device)
        return self.engines[name]

    def run(self, job: MusicJob, ctx: JobContext) -> PipelineOutput:
        if job.model == "ace-step":
            return self._run_ace_step(job, ctx)
        return self._run_heartmula(job, ctx)

    def _run_heartmula(self, job: MusicJob, ctx: JobContext) -> PipelineOutput:
        from worker.music.generator import GenerationCancelled, GenerationInputError

        generator = self.engine("heartmula")
        duration_s = job.duration_s or DEFAULT_DURATION_S
        if duration_s > generator.max_duration_s:
            raise JobInputError(
                "duration_s", f"at most {generator.max_duration_s:g} s for this model's context"
            )
        seed = resolve_seed(job.seed)

        def on_progress(phase: str, done: int, total: int) -> None:
            ctx.progress(done, total, phase=phase)

        try:
            result = generator.generate(
                lyrics=job.lyrics,
                tags=job.tags,
                duration_s=duration_s,
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
        sample_rate = generator.sample_rate
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
                "model": job.model,
                "seed": seed,
                "sample_rate": sample_rate,
                "channels": channels,
                "duration_s": round(duration_s, 3),
            },
        )

    def _run_ace_step(self, job: MusicJob, ctx: JobContext) -> PipelineOutput:
        engine = self.engine("ace-step")
        assert self._env is not None
        if job.guidance is not None and engine.is_turbo:
            raise JobInputError("guidance", "this turbo model has guidance built in; leave it out")
        lyric_tokens = engine.lyric_tokens(job.lyrics)
        if lyric_tokens > engine.max_lyric_tokens:
            raise JobInputError(
                "lyrics", f"{lyric_tokens} tokens; ACE-Step reads at most {engine.max_lyric_tokens}"
            )
        duration_s = job.duration_s or DEFAULT_DURATION_S
        reference = None
        if job.reference_audio is not None:
            reference = load_audio(
                job.reference_audio,
                "reference_audio",
                InputLimits.from_settings(self._env.settings),
                self._env.files,
                sample_rate=engine.sample_rate,
                max_duration_s=MAX_DURATION_S["ace-step"],
            )
            if job.duration_s is not None:
                reference = reference[:, : int(job.duration_s * engine.sample_rate)]
            duration_s = reference.shape[1] / engine.sample_rate
        seed = resolve_seed(job.seed)
        seeds = [seed + index for index in range(job.batch)]

        def on_step(done: int, total: int) -> None:
            ctx.progress(done, total, phase="diffusion")
            ctx.check_cancelled()

        songs = engine.generate(
            lyrics=job.lyrics,
            tags=job.tags,
            duration_s=duration_s,
            steps=job.steps,
            guidance=job.guidance,
            seeds=seeds,
            reference=reference,
            cover_strength=job.cover_strength,
            on_step=on_step,
        )
        channels, samples = songs.waveforms.shape[1:]
        song_s = samples / songs.sample_rate
        outputs = []
        for index, (waveform, song_seed) in enumerate(zip(songs.waveforms, seeds, strict=True)):
            name = f"song.{job.format}" if job.batch == 1 else f"song_{index:02d}.{job.format}"
            outputs.append(
                ctx.folder.write_with(
                    name,
                    lambda temp, waveform=waveform: write_audio(
                        temp, waveform, songs.sample_rate, job.format
                    ),
                    kind="audio",
                    sample_rate=songs.sample_rate,
                    channels=channels,
                    duration_s=round(song_s, 3),
                    seed=song_seed,
                )
            )
        return PipelineOutput(
            outputs=outputs,
            metrics={
                "generate_s": round(songs.generate_s, 3),
                # compute time per second of audio made, over the whole batch
                "rtf": round(songs.generate_s / (song_s * job.batch), 4) if song_s else 0.0,
            },
            fields={
                "model": job.model,
                "task": job.task,
                **({"cover": engine.cover_mode} if job.task == "cover" else {}),
                "seed": seed,
                "seeds": seeds,
                "sample_rate": songs.sample_rate,
                "channels": channels,
                "duration_s": round(song_s, 3),
            },
        )
