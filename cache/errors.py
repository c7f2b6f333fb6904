"""Errors the model cache raises, and how huggingface_hub's map onto them. Each message says what went wrong and
what to do about it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class CacheError(Exception):
    """Base class: the model cache could not provide a model."""


class ModelNotFoundError(CacheError):
    """The source does not have this model (unknown repo, missing directory, unknown generator)."""


class RevisionNotFoundError(CacheError):
    """The repo exists but the pinned revision does not."""


class AccessDeniedError(CacheError):
    """The repo is gated or private and the request carried no token with access."""


class InsufficientSpaceError(CacheError):
    """The volume lacks the free space the download needs (checked before downloading), or filled up during it."""


def no_space(error: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT error behind `error` (a source may wrap it), or None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error
        error = error.__cause__ or error.__context__
    return None


class CacheTimeoutError(CacheError):
    """Another worker held the model's download lock for longer than this worker may wait."""


class LayoutError(CacheError):
    """The downloaded files do not form the layout the model needs (missing files or shards)."""


class VerificationError(CacheError):
    """A downloaded file's size or hash differs from what the source listed."""


class SourceError(CacheError):
    """The source failed for another reason (network, offline mode, generator crash)."""


class ModelKindError(CacheError):
    """A model a job named is not the kind of file it needs (a LoRA given as a checkpoint, an SD 1.5 file...)."""


class LeaseLostError(CacheError):
    """Another worker took over this worker's download lock (its lease expired while it was paused)."""


_SEED_HINT = "seed the volume (python -m cache seed NAME --from DIR)"


@contextmanager
def hub_errors(repo: str, revision: str) -> Iterator[None]:
    """Turn huggingface_hub's exceptions raised inside the block into ours, each saying what to do."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from huggingface_hub.errors import RevisionNotFoundError as HubRevisionNotFound

    endpoint = constants.ENDPOINT
    token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "no HF_TOKEN is set"
    try:
        yield
    except GatedRepoError as err:
        raise AccessDeniedError(
            f"{repo} is gated ({token}): accept its terms at {endpoint}/{repo} with a Hugging Face account, then "
            "set HF_TOKEN to a read token of that account"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(
            f"repo {repo} not found on {endpoint}: check its name; if it is private, set HF_TOKEN to a token with "
            f"access ({token})"
        ) from err
    except HubRevisionNotFound as err:
        raise RevisionNotFoundError(
            f"revision {revision} not found in {repo} on {endpoint}: pin an existing commit or branch"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise AccessDeniedError(f"{endpoint} refused {repo} ({status}, {token}): check HF_TOKEN") from err
        raise SourceError(f"{endpoint} failed for {repo} ({status}): {err}; retry later") from err
    except OfflineModeIsEnabled as err:
        raise SourceError(
            f"{repo} is not on the volume and HF_HUB_OFFLINE is set: unset it, or {_SEED_HINT}"
        ) from err
    except httpx2.TransportError as err:
        raise SourceError(
            f"cannot reach {endpoint} for {repo}: {err}; check the network or HF_ENDPOINT, or {_SEED_HINT}"
        ) from err
