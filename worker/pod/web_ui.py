"""The pod's web UI at `/ui`: a tab per job type, its form built from the job's pydantic model (so a field added
to a schema shows up by itself, with its default and bounds), submitting through the same queue as `/run`.

The page (`ui_page.html`) is plain HTML and JavaScript; it reads the forms from `/ui/schema`, submits to `/run`,
follows a job through `/ui/jobs/<id>` (its status, the fields its error names, its files with URLs) and serves the
files from `/ui/files/<job id>/<path>`. Everything sits behind the same token as the API.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from worker.job_folders import UnsafePathError, safe_relpath, validate_job_id
from worker.pod.job_queue import PodQueue, UnknownJobError
from worker.schemas import JOB_MODELS
from worker_client.field_errors import parse_issues

_PAGE = Path(__file__).with_name("ui_page.html")
_CAPTION_CHARS = 2000


def _widget(annotation: Any) -> tuple[str, list[Any]]:
    """The form widget of a field type: text, int, float, bool, choice (with its choices), lines or json."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "choice", list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return _widget(options[0])
        return ("text", []) if str in options else ("json", [])
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        item = typing.get_args(item)[0] if typing.get_origin(item) is typing.Annotated else item
        return ("lines", []) if item is str else ("json", [])
    if annotation is bool:
        return "bool", []
    if annotation is int:
        return "int", []
    if annotation is float:
        return "float", []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "json", []
    return "text", []


def _bounds(info: FieldInfo) -> str:
    """The field's bounds as a short text: `64–2048`, `> 0, ≤ 5`, `≤ 4000 characters`."""
    low = high = ""
    length = []
    for item in info.metadata:
        if isinstance(item, Ge):
            low = f"≥ {item.ge}"
        elif isinstance(item, Gt):
            low = f"> {item.gt}"
        elif isinstance(item, Le):
            high = f"≤ {item.le}"
        elif isinstance(item, Lt):
            high = f"< {item.lt}"
        elif isinstance(item, MinLen) and item.min_length > 1:
            length.append(f"≥ {item.min_length}")
        elif isinstance(item, MaxLen):
            length.append(f"≤ {item.max_length}")
    if low.startswith("≥") and high.startswith("≤"):
        numbers = f"{low[2:]}–{high[2:]}"
    else:
        numbers = ", ".join(part for part in (low, high) if part)
    unit = " items" if _widget(info.annotation)[0] in ("lines", "json") else " characters"
    return "; ".join(part for part in (numbers, ", ".join(length) + unit if length else "") if part)


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def form_spec(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The fields of a job model as the page draws them (the fixed `type` field left out)."""
    fields = []
    for name, info in model.model_fields.items():
        widget, choices = _widget(info.annotation)
        if name == "type":
            continue
        if widget == "text" and info.examples:  # free text, offered its usual values (a datalist)
            choices = [str(example) for example in info.examples]
        fields.append(
            {
                "name": name,
                "widget": widget,
                "choices": choices,
                "required": info.is_required(),
                "default": _default(info),
                "bounds": _bounds(info),
                "description": info.description or "",
            }
        )
    return fields


def _output_view(output: dict[str, Any], job_data: Path) -> dict[str, Any]:
    """An output entry with the URL the page loads it from, and a caption's text inline."""
    relpath = str(output.get("relpath", ""))
    view = {**output, "url": "/ui/files/" + relpath}
    if output.get("kind") == "caption":
        try:
            view["text"] = (job_data / relpath).read_text(encoding="utf-8")[:_CAPTION_CHARS]
        except (OSError, UnicodeDecodeError):
            view["text"] = ""
    return view


def ui_router(queue: PodQueue) -> APIRouter:
    router = APIRouter()
    assert queue.worker is not None, "bind the queue to its worker first"
    job_data = queue.worker.store.root
    served = [job for job in JOB_MODELS if job in queue.worker.jobs]

    @router.get("/ui")
    @router.get("/ui/")
    async def page() -> Response:
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    @router.get("/ui/schema")
    async def schema() -> Response:
        return JSONResponse({"jobs": [{"type": job, "fields": form_spec(JOB_MODELS[job])} for job in served]})

    @router.get("/ui/jobs")
    async def jobs() -> Response:
        return JSONResponse({"jobs": [_row(record) for record in queue.records()]})

    def _row(record: Any) -> dict[str, Any]:
        body = record.body()
        return {
            "id": record.id,
            "type": record.job_type,
            "status": record.status,
            "submitted_at": record.submitted_at,
            "delayTime": body.get("delayTime"),
            "executionTime": body.get("executionTime"),
            "error": record.error,
        }

    @router.get("/ui/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        try:
            body = queue.body(job_id)
        except UnknownJobError:
            return JSONResponse({"error": f"id: no job {job_id} on record"}, status_code=404)
        error = body.get("error")
        output = body.get("output") if body["status"] == "COMPLETED" else None
        view = {
            "id": job_id,
            "status": body["status"],
            "error": error,
            "issues": [{"field": issue.field, "reason": issue.reason} for issue in parse_issues(error or "")],
            "progress": body.get("output") if body["status"] == "IN_PROGRESS" else None,
            "outputs": [_output_view(item, job_data) for item in (output or {}).get("outputs", [])],
            "result": output,
        }
        return JSONResponse(view)

    @router.get("/ui/files/{job_id}/{relpath:path}")
    async def file(job_id: str, relpath: str) -> Response:
        try:
            folder = job_data / validate_job_id(job_id)
            target = folder.joinpath(*safe_relpath(relpath).parts)
        except UnsafePathError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        if not target.resolve().is_relative_to(folder.resolve()) or not target.is_file():
            return JSONResponse({"error": f"file: no {relpath} in job {job_id}"}, status_code=404)
        return FileResponse(target)

    return router
