"""Copy a whole checkpoint: local DCP directory <-> S3, and S3 -> S3.

A copy is planned before anything at the destination changes: the source
must be a complete checkpoint whose ``.metadata`` reads and whose every
referenced object exists at its recorded length, and the destination must
be somewhere else than the source. Only ``.metadata`` and the objects it
references are copied; shard-named leftovers of earlier saves (strays) stay
behind and are counted.

The copy then follows the rule of a save: data first, in parallel, and
``.metadata`` last, so an interrupted copy leaves an incomplete checkpoint
that nothing loads by mistake. Replacing a complete checkpoint
(``overwrite``) keeps it loadable as long as possible: while no copied
object replaces one of its objects, its ``.metadata`` stays until the new
one replaces it in one PUT (or one rename); otherwise it is removed right
before the first object is replaced, never earlier, so a crash never leaves
the old ``.metadata`` over new data. Once the new ``.metadata`` is in place,
the destination's strays (shard objects it does not reference) are removed,
and nothing else.

S3 -> S3 copies are server-side (CopyObject, or UploadPartCopy above 5 GiB):
no bytes pass through this machine. Files written locally get the mode any
new file gets (``0o666`` less the umask), like ``FileSystemWriter``'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3dcp._commit import commit_metadata, uncommit
from s3dcp._config import MIB, S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointDamagedError, CheckpointExistsError, CheckpointNotFoundError, ObjectNotFoundError
from s3dcp._files import write_atomically
from s3dcp._format.layout import METADATA_NAME, SAVING_MARKER, empty_shards, find_strays
from s3dcp._format.metadata import check_relative_key
from s3dcp._format.references import referenced_objects
from s3dcp._interrupts import leave_signals_to_main_thread
from s3dcp._progress import human_bytes
from s3dcp._s3.client import S3Client
from s3dcp._s3.objects import delete_keys, list_pages, read_object
from s3dcp._s3.upload import TransferPool, complete_multipart, multipart_upload, upload_file
from s3dcp._uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["CopyPlan", "CopyReport", "plan_copy", "run_copy", "copy_checkpoint", "upload_file"]

_THREADS = 4
_READ_CHUNK = 8 * MIB
_COPY_OBJECT_LIMIT = 5 * 1024**3  # larger objects are copied part by part
_COPY_PART = 512 * MIB

OnObject = Callable[[str, int], Any]
OnBytes = Callable[[int], Any]
Side = S3Uri | Path


@dataclass(frozen=True)
class CopyPlan:
    """What a copy will do, found out before the destination is touched.

    Attributes:
        source, destination: where from and where to.
        objects: relative path -> size of each object to copy, ``.metadata`` not included.
        metadata: the source's ``.metadata`` bytes, the commit record to write last.
        replaces_commit: the destination holds a complete checkpoint (``overwrite`` was given).
        replaces_save: the destination holds the marker of an unfinished save (``overwrite``
            was given); it is removed with the strays.
        replaced: objects to copy that already exist at the destination and will be replaced.
        source_strays: relative path -> size of the source's strays, which are not copied.
        destination_strays: relative path -> size of the destination's strays, removed after the commit.
    """

    source: Side
    destination: Side
    objects: Mapping[str, int]
    metadata: bytes
    replaces_commit: bool
    replaces_save: bool
    replaced: frozenset[str]
    source_strays: Mapping[str, int]
    destination_strays: Mapping[str, int]
    client: S3Client

    @property
    def total_bytes(self) -> int:
        """Bytes the copy moves, ``.metadata`` included."""
        return sum(self.objects.values()) + len(self.metadata)

    def describe(self) -> list[str]:
        """What the copy would do, one line each (for a dry run): copied, replaced, left behind, removed."""
        lines = [
            f"would copy {len(self.objects) + 1} objects ({human_bytes(self.total_bytes)}) "
            f"from {self.source} to {self.destination}"
        ]
        if self.replaces_commit:
            how = (
                f"{len(self.replaced)} of its objects replaced"
                if self.replaced
                else f"its {METADATA_NAME} replaced last, in one write"
            )
            lines.append(f"would replace the complete checkpoint at {self.destination} ({how})")
        if self.source_strays:
            lines.append(
                f"would leave behind {len(self.source_strays)} stray object(s) "
                f"({human_bytes(sum(self.source_strays.values()))}) under {self.source}"
            )
        lines.extend(
            f"would remove {self.destination}/{relative} ({human_bytes(size)})"
            for relative, size in sorted(self.destination_strays.items())
        )
        if self.replaces_save:
            lines.append(f"would remove {self.destination}/{SAVING_MARKER}, the marker of an unfinished save")
        return lines


@dataclass(frozen=True)
class CopyReport:
    """What :func:`run_copy` did."""

    objects: int  # objects copied, .metadata included
    bytes_copied: int
    strays_left: int  # source strays not copied
    stray_bytes_left: int
    strays_removed: int  # destination strays removed after the commit
    stray_bytes_removed: int


def _overlap(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> str | None:
    """Why ``destination`` cannot receive a copy of ``source`` (the same place, or one inside the other), or None."""
    if is_s3_uri(source) and is_s3_uri(destination):
        src, dst = parse_s3_uri(source), parse_s3_uri(destination)
        if src.bucket != dst.bucket:
            return None
        src_parts, dst_parts = _parts(src.prefix), _parts(dst.prefix)
    elif not is_s3_uri(source) and not is_s3_uri(destination):
        src_parts = Path(source).resolve().parts
        dst_parts = Path(destination).resolve().parts
    else:
        return None
    if src_parts == dst_parts:
        return "the destination is the source itself"
    if dst_parts[: len(src_parts)] == src_parts:
        return "the destination lies inside the source"
    if src_parts[: len(dst_parts)] == dst_parts:
        return "the source lies inside the destination"
    return None


def _parts(prefix: str) -> tuple[str, ...]:
    return tuple(prefix.split("/")) if prefix else ()


def _listing(client: S3Client, side: Side) -> dict[str, int]:
    """Relative path -> size of every object under ``side`` (nothing if it does not exist)."""
    if isinstance(side, S3Uri):
        head = f"{side.prefix}/" if side.prefix else ""
        return {
            entry["Key"][len(head) :]: entry["Size"]
            for page in list_pages(client, side.bucket, head)
            for entry in page.get("Contents", [])
        }
    if not side.exists():
        return {}
    if not side.is_dir():
        raise ValueError(f"{side} exists and is not a directory; give a directory to copy the checkpoint into")
    return {path.relative_to(side).as_posix(): path.stat().st_size for path in side.rglob("*") if path.is_file()}


def plan_copy(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
    overwrite_advice: str = "pass overwrite=True",
) -> CopyPlan:
    """Check everything a copy of ``source`` to ``destination`` needs, changing nothing.

    ``overwrite_advice`` is how refusals tell the caller to overwrite (the
    command line says ``add --overwrite``).

    Raises:
        ValueError: both sides are local, or the destination overlaps the source.
        CheckpointNotFoundError: the source has no ``.metadata``.
        CheckpointDamagedError: the source's ``.metadata`` does not read, or an
            object it references is missing or shorter than recorded.
        UnsafeCheckpointError: the metadata references a path outside the source.
        CheckpointExistsError: the destination holds a complete checkpoint, or
            the marker of a save that may still be running, and ``overwrite``
            is not set.
    """
    overlap = _overlap(source, destination)
    if overlap is not None:
        raise ValueError(
            f"cannot copy {source} to {destination}: {overlap}; copy to a path outside the source "
            "(to rename a checkpoint, copy it to a new path, then remove the old one)"
        )
    if not (is_s3_uri(source) or is_s3_uri(destination)):
        raise ValueError("one side of a copy must be an s3:// URI (for local to local, use cp -r)")
    src: Side = parse_s3_uri(source) if is_s3_uri(source) else Path(source)
    dst: Side = parse_s3_uri(destination) if is_s3_uri(destination) else Path(destination)
    client = S3Client(resolve_settings(region, s3client_config))

    if isinstance(src, Path) and not src.is_dir():
        raise CheckpointNotFoundError(f"{src} is not a directory; give a DCP checkpoint directory")
    found = _listing(client, src)
    if METADATA_NAME not in found:
        why = (
            f"a save there has not committed ({SAVING_MARKER} is there: one is running, or one died); "
            "copy it once it has"
            if SAVING_MARKER in found
            else "wrong path, or the save never finished"
        )
        raise CheckpointNotFoundError(f"no complete checkpoint at {src}: {METADATA_NAME} is missing ({why})")
    where = f"{src}/{METADATA_NAME}"
    try:
        metadata = (
            read_object(client, src.bucket, src.key(METADATA_NAME))
            if isinstance(src, S3Uri)
            else ((src / METADATA_NAME).read_bytes())
        )
    except (ObjectNotFoundError, FileNotFoundError) as gone:  # listed a moment ago: a save is replacing it
        raise CheckpointNotFoundError(
            f"no complete checkpoint at {src}: its {METADATA_NAME} was removed while the copy was being "
            "planned (a save to that path is replacing it); copy it once that save has committed"
        ) from gone
    needed = referenced_objects(metadata, where)
    objects: dict[str, int] = {}
    for relative in sorted(needed):
        check_relative_key(relative, where)
        size = found.get(relative)
        if size is None:
            raise CheckpointDamagedError(
                f"{src} is damaged: its {METADATA_NAME} references {src}/{relative}, which is missing; "
                "restore it, or copy another checkpoint",
                bucket=src.bucket if isinstance(src, S3Uri) else None,
                key=src.key(relative) if isinstance(src, S3Uri) else None,
            )
        if size < needed[relative]:
            raise CheckpointDamagedError(
                f"{src} is damaged: {src}/{relative} holds {size} bytes, its {METADATA_NAME} records "
                f"{needed[relative]}; restore it, or copy another checkpoint",
                bucket=src.bucket if isinstance(src, S3Uri) else None,
                key=src.key(relative) if isinstance(src, S3Uri) else None,
            )
        objects[relative] = size
    # what a rank or writer thread with nothing to store wrote: part of the layout, copied too
    for relative in empty_shards(found):
        objects.setdefault(relative, 0)

    existing = _listing(client, dst)
    replaces_commit, replaces_save = METADATA_NAME in existing, SAVING_MARKER in existing
    if (replaces_commit or replaces_save) and not overwrite:
        found_name, what = (
            (METADATA_NAME, "a complete checkpoint")
            if replaces_commit
            else (SAVING_MARKER, f"an unfinished save ({SAVING_MARKER}: one may be running there, or one died)")
        )
        raise CheckpointExistsError(
            f"{dst} already holds {what}; copy to a new path, or {overwrite_advice} to replace it",
            bucket=dst.bucket if isinstance(dst, S3Uri) else None,
            key=dst.key(found_name) if isinstance(dst, S3Uri) else None,
        )
    return CopyPlan(
        source=src,
        destination=dst,
        objects=objects,
        metadata=metadata,
        replaces_commit=replaces_commit,
        replaces_save=replaces_save,
        replaced=frozenset(objects) & frozenset(existing),
        source_strays=find_strays(found, needed),
        destination_strays=find_strays(existing, needed),
        client=client,
    )


def _download_object(client: S3Client, bucket: str, key: str, target: Path, on_bytes: OnBytes | None) -> None:
    def attempt() -> None:
        body = client.raw.get_object(Bucket=bucket, Key=key)["Body"]
        with body:
            write_atomically(target, body.iter_chunks(_READ_CHUNK), on_bytes=on_bytes)

    client.run(attempt, "get_object", bucket, key)


def _copy_object(
    client: S3Client, source: S3Uri, key: str, size: int, target: S3Uri, part_size: int, on_bytes: OnBytes | None
) -> None:
    """Server-side copy of ``source/key`` to ``target/key``."""
    from_key, to_key = source.key(key), target.key(key)
    copy_source = {"Bucket": source.bucket, "Key": from_key}
    if size <= _COPY_OBJECT_LIMIT:
        client.call("copy_object", target.bucket, to_key, CopySource=copy_source)
        if on_bytes is not None:
            on_bytes(size)
        return
    with multipart_upload(client, target.bucket, to_key) as upload_id:
        parts = []
        step = max(part_size, _COPY_PART)
        for number, first in enumerate(range(0, size, step), start=1):
            last = min(first + step, size) - 1
            answer = client.call(
                "upload_part_copy",
                target.bucket,
                to_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=copy_source,
                CopySourceRange=f"bytes={first}-{last}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            if on_bytes is not None:
                on_bytes(last + 1 - first)
        complete_multipart(client, target.bucket, to_key, upload_id, parts)


def run_copy(plan: CopyPlan, *, on_object: OnObject | None = None, on_bytes: OnBytes | None = None) -> CopyReport:
    """Carry out ``plan``: data, then ``.metadata``, then the destination's strays go.

    ``on_bytes(n)`` is called as bytes are moved (``n`` is negative when a
    failed attempt's bytes are taken back), ``on_object(relative_path,
    size)`` as each object is done; both may be called from worker threads.
    """
    client, src, dst = plan.client, plan.source, plan.destination
    part_size = client.settings.config.part_size
    pool = TransferPool(client.concurrency("copy"))

    def copy_one(relative: str) -> None:
        if isinstance(src, S3Uri) and isinstance(dst, S3Uri):
            _copy_object(client, src, relative, plan.objects[relative], dst, part_size, on_bytes)
        elif isinstance(src, S3Uri) and isinstance(dst, Path):
            _download_object(client, src.bucket, src.key(relative), dst / relative, on_bytes)
        elif isinstance(src, Path) and isinstance(dst, S3Uri):
            upload_file(client, pool, src / relative, dst.bucket, dst.key(relative), part_size, on_bytes)
        else:
            raise AssertionError("local to local copies are refused when planned")
        if on_object is not None:
            on_object(relative, plan.objects[relative])

    def copy_all(relatives: list[str]) -> None:
        with ThreadPoolExecutor(
            _THREADS, thread_name_prefix="s3dcp-copy", initializer=leave_signals_to_main_thread
        ) as workers:
            list(workers.map(copy_one, relatives))

    try:
        # new objects cannot harm the checkpoint being replaced: they go first, under its commit
        copy_all(sorted(set(plan.objects) - plan.replaced))
        if plan.replaced:
            if plan.replaces_commit:
                _uncommit(client, dst)
            copy_all(sorted(plan.replaced))
    finally:
        pool.shutdown()
    _commit(plan)
    if on_bytes is not None:
        on_bytes(len(plan.metadata))
    if on_object is not None:
        on_object(METADATA_NAME, len(plan.metadata))
    _remove(client, dst, sorted(plan.destination_strays) + ([SAVING_MARKER] if plan.replaces_save else []))
    return CopyReport(
        objects=len(plan.objects) + 1,
        bytes_copied=plan.total_bytes,
        strays_left=len(plan.source_strays),
        stray_bytes_left=sum(plan.source_strays.values()),
        strays_removed=len(plan.destination_strays),
        stray_bytes_removed=sum(plan.destination_strays.values()),
    )


def _uncommit(client: S3Client, dst: Side) -> None:
    """Remove the destination's ``.metadata``: what follows replaces objects the old one references."""
    if isinstance(dst, S3Uri):
        uncommit(client, dst)
    else:
        (dst / METADATA_NAME).unlink(missing_ok=True)


def _commit(plan: CopyPlan) -> None:
    """Write the new ``.metadata`` in one PUT or one rename, replacing the old one if it is still there."""
    dst = plan.destination
    if isinstance(dst, S3Uri):
        # create-only unless an old commit record is meant to be replaced in this very PUT
        in_place = plan.replaces_commit and not plan.replaced
        commit_metadata(plan.client, dst.bucket, dst.key(METADATA_NAME), plan.metadata, exclusive=not in_place)
    else:
        write_atomically(dst / METADATA_NAME, [plan.metadata])


def _remove(client: S3Client, dst: Side, relatives: list[str]) -> None:
    """Delete the destination's strays and an old save marker (locally, also the directories left empty)."""
    if isinstance(dst, S3Uri):
        delete_keys(client, dst.bucket, [dst.key(relative) for relative in relatives])
        return
    for relative in relatives:
        path = dst / relative
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == dst or not parent.is_relative_to(dst) or any(parent.iterdir()):
                break
            parent.rmdir()


def copy_checkpoint(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
    on_object: OnObject | None = None,
    on_bytes: OnBytes | None = None,
) -> CopyReport:
    """Copy the complete checkpoint at ``source`` to ``destination``.

    Each side is an ``s3://bucket/prefix`` URI or a local directory (as
    ``FileSystemWriter`` writes it); local to local is left to ``cp -r``.
    See :func:`plan_copy` for what is refused and :func:`run_copy` for the
    callbacks.
    """
    plan = plan_copy(source, destination, overwrite=overwrite, region=region, s3client_config=s3client_config)
    return run_copy(plan, on_object=on_object, on_bytes=on_bytes)
