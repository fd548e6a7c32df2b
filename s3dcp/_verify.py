"""Check a stored checkpoint without loading it: every item read back and digested.

Each shard object is streamed once from start to end (no ranged GETs, no
copy of a whole item in memory) and every item's bytes are digested on the
way and compared with the digest the writer recorded. Missing objects,
objects shorter than the metadata says and digests that differ are all
reported, with the object key and the item's name, rather than stopping at
the first. A ``.metadata`` that does not unpickle is reported the same way:
the checkpoint was committed and is damaged, which is what verify is for
(``s3dcp verify`` exits 3), not a missing checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions
import xxhash

from s3dcp._config import MIB, S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointDamagedError
from s3dcp._format.integrity import ALGORITHM, get_checksum
from s3dcp._format.layout import METADATA_NAME
from s3dcp._interrupts import leave_signals_to_main_thread
from s3dcp._load import check_records, fetch_metadata
from s3dcp._s3.client import S3Client
from s3dcp._s3.retry import error_code
from s3dcp._uri import parse_s3_uri

__all__ = ["Problem", "VerifyReport", "verify_checkpoint"]

_CHUNK = MIB
_THREADS = 4


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stored checkpoint."""

    key: str  # the object's key in the bucket
    item: str  # the state-dict name of the item, or "" for the object as a whole
    detail: str

    def __str__(self) -> str:
        return f"{self.key}: {self.item + ': ' if self.item else ''}{self.detail}"


@dataclass
class VerifyReport:
    """What :func:`verify_checkpoint` found."""

    uri: str
    items: int = 0
    checked: int = 0  # items whose recorded digest matched
    unchecked: int = 0  # items with no recorded digest (written by another tool)
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Item:
    name: str
    offset: int
    length: int
    checksum: str | None


def _verify_object(
    client: S3Client, bucket: str, key: str, items: list[_Item], on_bytes: Callable[[int], Any] | None = None
) -> tuple[int, list[Problem], int]:
    """Stream one object and digest its items; return (bytes read, problems, items checked).

    ``on_bytes(n)`` hears of each chunk as it is read, and of ``-n`` when a
    failed attempt's bytes are taken back before a retry.
    """
    items = sorted(items, key=lambda item: item.offset)

    def attempt() -> tuple[int, list[Problem], int]:
        problems: list[Problem] = []
        checked = 0
        try:
            body = client.raw.get_object(Bucket=bucket, Key=key)["Body"]
        except botocore.exceptions.ClientError as err:
            if error_code(err)[0] in ("NoSuchKey", "404"):
                return 0, [Problem(key, "", f"object is missing ({len(items)} items lost)")], 0
            raise
        position = index = 0
        hasher = xxhash.xxh3_64()

        def finish_current() -> None:
            nonlocal index, checked
            item = items[index]
            actual = f"{ALGORITHM}:{hasher.hexdigest()}"
            if item.checksum is not None and actual == item.checksum:
                checked += 1
            elif item.checksum is not None:
                last = item.offset + item.length - 1
                problems.append(
                    Problem(key, item.name, f"bytes {item.offset}-{last} digest {actual}, recorded {item.checksum}")
                )
            hasher.reset()
            index += 1

        try:
            with body:
                for chunk in body.iter_chunks(_CHUNK):
                    view = memoryview(chunk)
                    start, position = position, position + len(view)
                    while index < len(items) and items[index].offset < position:
                        item = items[index]
                        lo, hi = max(item.offset, start), min(item.offset + item.length, position)
                        if hi > lo:
                            hasher.update(view[lo - start : hi - start])
                        if item.offset + item.length > position:
                            break  # the item goes on in the next chunk
                        finish_current()
                    if on_bytes is not None:
                        on_bytes(len(view))
        except BaseException:
            if on_bytes is not None and position:
                on_bytes(-position)  # this attempt's bytes are read again by the next
            raise
        while index < len(items) and items[index].length == 0 and items[index].offset <= position:
            finish_current()  # empty items at the very end
        for item in items[index:]:
            last = item.offset + item.length - 1
            problems.append(
                Problem(key, item.name, f"object ends at byte {position}, the item needs bytes {item.offset}-{last}")
            )
        return position, problems, checked

    return client.run(attempt, "get_object", bucket, key)


def verify_checkpoint(
    uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
    on_object: Callable[[str, int], Any] | None = None,
    on_bytes: Callable[[int], Any] | None = None,
    on_totals: Callable[[int, int], Any] | None = None,
) -> VerifyReport:
    """Read back every item of the checkpoint at ``uri`` and check its digest.

    Raises what loading would (``CheckpointNotFoundError`` when there is no
    ``.metadata``, ``UnsafeCheckpointError`` for hostile metadata, the
    endpoint and access errors); damage is returned in the report's
    ``problems``: objects missing or shorter than recorded, digests that
    differ, and a ``.metadata`` that does not unpickle. ``on_object(key,
    bytes)`` is called as each object is done, ``on_bytes(n)`` as bytes
    are read (negative when a failed attempt's are taken back), and
    ``on_totals(objects, bytes)`` once, before reading, with the objects
    to read and the bytes the metadata says they hold at least (all for
    progress displays).
    """
    where = parse_s3_uri(uri)
    client = S3Client(resolve_settings(region, s3client_config))
    try:
        metadata, _ = fetch_metadata(client, where)
        records = check_records(metadata, where)
    except CheckpointDamagedError as damaged:
        return VerifyReport(str(where), problems=[Problem(where.key(METADATA_NAME), "", str(damaged))])
    by_key: dict[str, list[_Item]] = {}
    for index, info in records.storage_data.items():
        item = _Item(index.fqn, info.offset, info.length, get_checksum(info))
        by_key.setdefault(where.key(info.relative_path), []).append(item)
    report = VerifyReport(str(where), items=sum(len(items) for items in by_key.values()))
    report.unchecked = sum(1 for items in by_key.values() for item in items if item.checksum is None)
    if on_totals is not None:
        ends = [max(item.offset + item.length for item in items) for items in by_key.values()]
        on_totals(len(by_key), sum(ends))

    def run(key: str) -> tuple[int, list[Problem], int]:
        outcome = _verify_object(client, where.bucket, key, by_key[key], on_bytes)
        if on_object is not None:
            on_object(key, outcome[0])
        return outcome

    with ThreadPoolExecutor(
        _THREADS, thread_name_prefix="s3dcp-verify", initializer=leave_signals_to_main_thread
    ) as pool:
        for read, problems, checked in pool.map(run, sorted(by_key)):
            report.bytes_read += read
            report.problems.extend(problems)
            report.checked += checked
    return report
