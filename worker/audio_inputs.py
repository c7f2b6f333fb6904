"""Audio a job hands us (the song a cover re-sings), fetched like images and decoded safely.

The bytes come through `worker.inputs.source_bytes`: a URL (timeout, size cap, no private hosts), base64 or a
path on the volume, with the same `InputLimits` as images. Decoding is soundfile's; the length is read from the
header and refused before any sample is decoded, and the read itself stops one frame past the limit, so a file
whose header lies (a FLAC "zip bomb") costs no more than an honest one. Mono is spread to both channels and the
result resampled (soxr) to the rate the model works at.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from worker.inputs import InputLimits, VolumeFiles, source_bytes
from worker.schemas import JobInputError

if TYPE_CHECKING:
    import numpy as np

AUDIO_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "MP3", "OGG"})
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MIN_DURATION_S = 0.1
_UNKNOWN_LENGTH = 2**62


def decode_audio(data: bytes, field: str, *, sample_rate: int, max_duration_s: float) -> np.ndarray:
    """A float32 `[2, samples]` waveform at `sample_rate` from WAV, FLAC, MP3 or OGG bytes."""
    import numpy as np
    import soundfile
    import soxr

    if not data:
        raise JobInputError(field, "the audio is empty")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as audio:
            if audio.format not in AUDIO_FORMATS:
                raise JobInputError(
                    field, f"{audio.format} audio is not accepted; send WAV, FLAC, MP3 or OGG"
                )
            rate, channels = audio.samplerate, audio.channels
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise JobInputError(
                    field, f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
                )
            if channels not in (1, 2):
                raise JobInputError(field, f"{channels} channels; send mono or stereo")
            max_frames = int(max_duration_s * rate)
            # a stream that does not state its length reads as SF_COUNT_MAX frames: only the read can tell
            if max_frames < audio.frames < _UNKNOWN_LENGTH:
                raise JobInputError(
                    field, f"{audio.frames / rate:.1f} s is longer than the {max_duration_s:g} s limit"
                )
            samples = audio.read(frames=max_frames + 1, dtype="float32", always_2d=True)
    except JobInputError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        detail = getattr(error, "error_string", "") or type(error).__name__  # never the BytesIO's repr
        raise JobInputError(field, f"not readable WAV, FLAC, MP3 or OGG audio ({detail})") from None
    if len(samples) > max_frames:
        raise JobInputError(field, f"longer than the {max_duration_s:g} s limit")
    if len(samples) < MIN_DURATION_S * rate:
        raise JobInputError(field, f"{len(samples) / rate:.2f} s of audio; at least {MIN_DURATION_S:g} s")
    if not np.isfinite(samples).all():
        raise JobInputError(field, "the audio holds NaN or infinite samples")
    if channels == 1:
        samples = np.repeat(samples, 2, axis=1)
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(samples.T, dtype=np.float32)


def load_audio(
    source: str,
    field: str,
    limits: InputLimits,
    volume: VolumeFiles,
    *,
    sample_rate: int,
    max_duration_s: float,
) -> np.ndarray:
    """The stereo waveform an audio source string names, fetched and decoded with every bound applied."""
    if not source.strip():
        raise JobInputError(field, "empty audio source")
    data = source_bytes(source, field, limits, volume)
    return decode_audio(data, field, sample_rate=sample_rate, max_duration_s=max_duration_s)
