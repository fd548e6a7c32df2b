"""Copy a whole checkpoint: local DCP directory <-> S3, and S3 -> S3.

The copy follows the same rule as a save: shard objects first, in
parallel, and ``.metadata`` last, so an interrupted copy leaves an
incomplete checkpoint (no ``.metadata``) that nothing loads by mistake. An
existing complete checkpoint at the destination is refused unless
``overwrite``; with ``overwrite`` its ``.metadata`` is removed before any
shard is replaced. S3 -> S3 copies are server-side (CopyObject, or
UploadPartCopy above 5 GiB): no bytes pass through this machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._torch_compat import METADATA_NAME
from .catalog import list_pages
from .client import S3Client
from .commit import commit_metadata
from .config import S3ClientConfig, resolve_settings
from .download import object_exists, read_object
from .errors import CheckpointExistsError, CheckpointNotFoundError
from .metadata import check_relative_key
from .upload import ObjectUpload, TransferPool, choose_part_size
from .uri import S3Uri, is_s3_uri, parse_s3_uri

__all__ = ["copy_checkpoint", "upload_file"]

_THREADS = 4
_READ_CHUNK = 8 * 1024 * 1024
_COPY_OBJECT_LIMIT = 5 * 1024**3  # larger objects are copied part by part
_COPY_PART = 512 * 1024 * 1024

Progress = Callable[[str, int], Any]


def _s3_objects(client: S3Client, uri: S3Uri) -> dict[str, int]:
    """Relative path -> size of every object under ``uri``."""
    head = f"{uri.prefix}/" if uri.prefix else ""
    return {
        entry["Key"][len(head) :]: entry["Size"]
        for page in list_pages(client, uri.bucket, head)
        for entry in page.get("Contents", [])
    }


def _local_files(root: Path) -> dict[str, int]:
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def upload_file(client: S3Client, pool: TransferPool, path: Path, bucket: str, key: str, part_size: int) -> None:
    """Stream the local file ``path`` to ``s3://bucket/key`` (multipart above one part)."""
    size = path.stat().st_size
    with path.open("rb") as source, ObjectUpload(client, pool, bucket, key, choose_part_size(size, part_size),
                                                 size_hint=size) as upload:
        while chunk := source.read(_READ_CHUNK):
            upload.write(chunk)


def _download_object(client: S3Client, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> None:
        body = client.raw.get_object(Bucket=bucket, Key=key)["Body"]
        with body, tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
            try:
                shutil.copyfileobj(body, out, _READ_CHUNK)
            except BaseException:
                os.unlink(out.name)
                raise
        os.replace(out.name, target)

    client.run(attempt, "get_object", bucket, key)


def _copy_object(client: S3Client, source: S3Uri, key: str, size: int, target: S3Uri, part_size: int) -> None:
    """Server-side copy of ``source/key`` to ``target/key``."""
    from_key, to_key = source.key(key), target.key(key)
    copy_source = {"Bucket": source.bucket, "Key": from_key}
    if size <= _COPY_OBJECT_LIMIT:
        client.call("copy_object", target.bucket, to_key, CopySource=copy_source)
        return
    upload_id = client.call("create_multipart_upload", target.bucket, to_key)["UploadId"]
    try:
        parts = []
        step = max(part_size, _COPY_PART)
        for number, first in enumerate(range(0, size, step), start=1):
            last = min(first + step, size) - 1
            answer = client.call(
                "upload_part_copy", target.bucket, to_key, UploadId=upload_id, PartNumber=number,
                CopySource=copy_source, CopySourceRange=f"bytes={first}-{last}",
            )
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.call("complete_multipart_upload", target.bucket, to_key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
    except BaseException:
        client.call("abort_multipart_upload", target.bucket, to_key, UploadId=upload_id)
        raise


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


def copy_checkpoint(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
    on_object: Progress | None = None,
) -> int:
    """Copy the complete checkpoint at ``source`` to ``destination``; return the bytes copied.

    Each side is an ``s3://bucket/prefix`` URI or a local directory (as
    ``FileSystemWriter`` writes it); local to local is left to ``cp -r``.
    ``on_object(relative_path, size)`` is called as each object is done.
    """
    overlap = _overlap(source, destination)
    if overlap is not None:
        raise ValueError(
            f"cannot copy {source} to {destination}: {overlap}; copy to a path outside the source "
            "(to rename a checkpoint, copy it to a new path, then remove the old one)"
        )
    src_s3, dst_s3 = is_s3_uri(source), is_s3_uri(destination)
    if not (src_s3 or dst_s3):
        raise ValueError("one side of a copy must be an s3:// URI (for local to local, use cp -r)")
    client = S3Client(resolve_settings(region, s3client_config))
    part_size = client.settings.config.part_size

    if src_s3:
        src_uri = parse_s3_uri(source)
        objects = _s3_objects(client, src_uri)
        where = str(src_uri)
    else:
        src_dir = Path(source)
        if not src_dir.is_dir():
            raise CheckpointNotFoundError(f"{src_dir} is not a directory; give a DCP checkpoint directory")
        objects = _local_files(src_dir)
        where = str(src_dir)
    if METADATA_NAME not in objects:
        raise CheckpointNotFoundError(
            f"no complete checkpoint at {where}: {METADATA_NAME} is missing (wrong path, or the save never finished)"
        )
    for relative in objects:
        check_relative_key(relative, where)
    shards = {relative: size for relative, size in objects.items() if relative != METADATA_NAME}

    if dst_s3:
        dst_uri = parse_s3_uri(destination)
        metadata_key = dst_uri.key(METADATA_NAME)
        if object_exists(client, dst_uri.bucket, metadata_key):
            if not overwrite:
                raise CheckpointExistsError(
                    f"{dst_uri} already holds a complete checkpoint; copy to a new path or pass overwrite",
                    bucket=dst_uri.bucket, key=metadata_key,
                )
            client.call("delete_object", dst_uri.bucket, metadata_key)
    else:
        dst_dir = Path(destination)
        if (dst_dir / METADATA_NAME).exists():
            if not overwrite:
                raise CheckpointExistsError(
                    f"{dst_dir} already holds a checkpoint; copy to a new directory or pass overwrite"
                )
            (dst_dir / METADATA_NAME).unlink()
        dst_dir.mkdir(parents=True, exist_ok=True)

    pool = TransferPool(client.settings.config.max_concurrency)

    def copy_one(relative: str) -> None:
        if src_s3 and dst_s3:
            _copy_object(client, src_uri, relative, shards[relative], dst_uri, part_size)
        elif src_s3:
            _download_object(client, src_uri.bucket, src_uri.key(relative), dst_dir / relative)
        else:
            upload_file(client, pool, src_dir / relative, dst_uri.bucket, dst_uri.key(relative), part_size)
        if on_object is not None:
            on_object(relative, shards[relative])

    try:
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="s3dcp-copy") as workers:
            list(workers.map(copy_one, sorted(shards)))
    finally:
        pool.shutdown()

    # the commit: .metadata last, only after every shard is stored
    if src_s3:
        metadata = read_object(client, src_uri.bucket, src_uri.key(METADATA_NAME))
    else:
        metadata = (src_dir / METADATA_NAME).read_bytes()
    if dst_s3:
        commit_metadata(client, dst_uri.bucket, dst_uri.key(METADATA_NAME), bytes(metadata), exclusive=not overwrite)
    else:
        temporary = dst_dir / f"{METADATA_NAME}.tmp"
        temporary.write_bytes(metadata)
        os.replace(temporary, dst_dir / METADATA_NAME)
    if on_object is not None:
        on_object(METADATA_NAME, len(metadata))
    return sum(objects.values())
