"""Which tiered checkpoint to resume from: the newest complete one in either tier."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from s3dcp._catalog import latest_checkpoint
from s3dcp._config import S3ClientConfig
from s3dcp._errors import S3DCPError
from s3dcp._format.layout import parse_step
from s3dcp._tiered.local import complete_local_checkpoints
from s3dcp._uri import parse_s3_uri

__all__ = ["latest_tiered_checkpoint"]

log = logging.getLogger("s3dcp")


def latest_tiered_checkpoint(
    local_dir: str | os.PathLike[str],
    s3_path: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> str | None:
    """The name of the newest checkpoint complete in either tier, or ``None``.

    Newest by ``step_N`` (a local copy wins a tie: it loads faster). When S3
    cannot be reached the newest local checkpoint is returned, with a
    warning; with nothing local the S3 error is raised. With several nodes,
    each node sees only its own local tier: decide on one rank and broadcast.
    """
    local = complete_local_checkpoints(Path(local_dir))
    root = parse_s3_uri(s3_path)
    try:
        remote_uri = latest_checkpoint(str(root), region=region, s3client_config=s3client_config)
    except S3DCPError as error:
        if not local:
            raise
        log.warning("s3dcp: cannot list %s (%s); using the newest local checkpoint %s", root, error, local[-1])
        return local[-1]
    remote = remote_uri[len(str(root)) :].strip("/") if remote_uri else None
    candidates = ([(parse_step(local[-1]), 1, local[-1])] if local else []) + (
        [(parse_step(remote), 0, remote)] if remote else []
    )
    if not candidates:
        return None
    stepped = [c for c in candidates if c[0] is not None]
    if stepped:
        return max(stepped, key=lambda c: (c[0], c[1]))[2]
    return local[-1] if local else remote
