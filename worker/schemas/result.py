"""What a job answers: the files it wrote and its metrics, as `result.json` holds them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OutputFile(BaseModel):
    """A file a job wrote under its job folder."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="Absolute path on the volume.")
    relpath: str = Field(description="Path relative to the job_data folder: '<job id>/<name>'.")
    kind: str = Field(description="image, audio, lora, dataset, log, plot, archive, ...")
    bytes: int
    sha256: str


class JobResult(BaseModel):
    """What a job returns. Job types add their own fields (seed, sample_rate, ...)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    type: str
    outputs: list[OutputFile]
    metrics: dict[str, float | int] = Field(default_factory=dict)
