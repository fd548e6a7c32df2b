"""What checkpoints a prefix holds, which one to resume from, and removing them safely.

A **checkpoint** is a prefix P with ``P/.metadata`` (complete), or, without
it, with DCP shard objects directly under P, s3dcp's save marker
``P/.s3dcp-saving`` or upload markers ``P/.s3dcp-uploads/...`` (incomplete:
a save that died or is still running) and no ``.metadata`` or save marker
deeper down. A deeper one means P holds checkpoints (P is a run, or a
bucket of runs), and such a P is never taken for a checkpoint.

A checkpoint's **own objects** are its ``.metadata``, the objects the
metadata references, its ``.s3dcp-*`` objects, and shard-named objects
under it outside nested checkpoints; own objects the metadata does not
reference are **strays** (left by an earlier save to the same path).
Everything else under P (logs, configs, nested checkpoints) is not the
checkpoint's, and nothing here deletes it.

Listing uses ListObjectsV2 with a ``/`` delimiter to find the sub-prefixes
(one request per 1,000), one delimited listing per sub-prefix (a full one
only for a checkpoint with sub-prefixes of its own), and one GET of each
``.metadata``, several in parallel. :func:`latest_checkpoint` needs far
less: it sorts the sub-prefixes by step and looks for ``.metadata`` from the
newest down, so on a run with thousands of checkpoints it usually costs two
or three requests.

Every destructive call comes in two halves: a plan (``plan_delete``,
``plan_prune``, ``plan_gc``) that lists exactly what would go, and the
deletion of that plan (``remove``, ``abort_uploads``), so a caller can show
the plan and ask before anything is deleted. ``delete_checkpoint``,
``prune`` and ``gc`` do both, or only the plan with ``dry_run=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointDamagedError, CheckpointNotFoundError
from s3dcp._format.layout import (
    METADATA_NAME,
    SAVING_MARKER,
    UPLOAD_MARKERS,
    is_empty_shard,
    is_own_object,
    is_shard_name,
    parse_step,
)
from s3dcp._format.references import referenced_objects
from s3dcp._interrupts import leave_signals_to_main_thread
from s3dcp._s3.client import S3Client
from s3dcp._s3.objects import delete_keys, list_pages, read_object
from s3dcp._uri import S3Uri, parse_s3_uri

__all__ = [
    "CheckpointInfo",
    "StoredObject",
    "Removal",
    "Survey",
    "AbandonedUpload",
    "UploadSweep",
    "list_checkpoints",
    "survey",
    "latest_checkpoint",
    "checkpoint_info",
    "plan_delete",
    "delete_checkpoint",
    "plan_prune",
    "prune",
    "remove",
    "plan_gc",
    "gc",
    "abort_uploads",
    "checkpoint_roots",
    "is_settled",
    "is_checkpoint_object",
]

_LISTING_THREADS = 8
DEFAULT_GRACE = timedelta(hours=6)
_NEVER = datetime.min.replace(tzinfo=timezone.utc)
_SHOWN = 5  # examples named in a refusal


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint under a base prefix.

    Attributes:
        uri: ``s3://bucket/prefix`` of the checkpoint.
        step: N of a ``step_N`` part of its path, or ``None``.
        complete: its ``.metadata`` exists.
        size_bytes: bytes of ``.metadata`` and the objects it references
            (complete), or of its own objects (incomplete).
        num_objects: how many objects ``size_bytes`` counts.
        last_modified: the newest modification time among those objects.
        stray_objects: own objects the metadata does not reference (left by
            an earlier save to the same path); 0 for an incomplete one.
        stray_bytes: their total size.
        damaged: why a complete checkpoint cannot load (a referenced object
            missing or shorter than the metadata needs, an unreadable
            ``.metadata``), or ``None``.
    """

    uri: str
    step: int | None
    complete: bool
    size_bytes: int
    num_objects: int
    last_modified: datetime | None
    stray_objects: int = 0
    stray_bytes: int = 0
    damaged: str | None = None


@dataclass(frozen=True)
class StoredObject:
    """One listed object: key, size, modification time."""

    key: str
    size: int
    last_modified: datetime


def _client(region: str | None, s3client_config: S3ClientConfig | None) -> S3Client:
    return S3Client(resolve_settings(region, s3client_config))


def _head(uri: S3Uri) -> str:
    return f"{uri.prefix}/" if uri.prefix else ""


def _objects(pages: Iterable[dict[str, Any]]) -> Iterator[StoredObject]:
    for page in pages:
        for entry in page.get("Contents", []):
            yield StoredObject(entry["Key"], entry["Size"], entry["LastModified"])


def _listing(client: S3Client, bucket: str, head: str) -> tuple[list[StoredObject], list[str]]:
    """The objects directly under ``head`` and its sub-prefixes (full keys ending in ``/``)."""
    objects: list[StoredObject] = []
    children: list[str] = []
    for page in list_pages(client, bucket, head, Delimiter="/"):
        objects.extend(_objects([page]))
        children.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", []))
    return objects, children


# -- which checkpoints a listing holds -----------------------------------------------


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


def _inside(path: str, root: str) -> bool:
    """``path`` (a relative directory or key) lies at or below the relative directory ``root``."""
    return root == "" or path == root or path.startswith(root + "/")


def _strictly_inside(directory: str, root: str) -> bool:
    return directory != root and _inside(directory, root)


def checkpoint_roots(relative_keys: Iterable[str]) -> list[str]:
    """The checkpoints among relative keys, as relative directories (``""`` for the listing's own prefix).

    Pure: the definition in the module docstring applied to every directory
    of a recursive listing. Shard-named objects below a checkpoint belong to
    it (prefix strategies put them in sub-prefixes), so a directory of
    shards is a checkpoint of its own only outside every other checkpoint.
    """
    committed: set[str] = set()
    marked: set[str] = set()
    sharded: set[str] = set()
    for rel in relative_keys:
        parts = rel.split("/")
        directory, name = _parent(rel), parts[-1]
        if name == METADATA_NAME:
            committed.add(directory)
        elif name == SAVING_MARKER:
            marked.add(directory)
        elif UPLOAD_MARKERS in parts[:-1]:
            marked.add("/".join(parts[: parts.index(UPLOAD_MARKERS)]))
        elif is_shard_name(name):
            sharded.add(directory)
    deep_signals = committed | (marked - committed)
    roots = set(committed)
    roots.update(d for d in marked - committed if not any(_strictly_inside(s, d) for s in deep_signals))
    for directory in sorted(sharded, key=lambda d: (d.count("/") if d else -1, d)):
        if directory in roots or any(_inside(directory, root) for root in roots):
            continue  # a checkpoint's own shards (or a strategy's sub-prefix of them)
        if any(_strictly_inside(s, directory) for s in deep_signals):
            continue  # holds checkpoints: a run, not a checkpoint
        roots.add(directory)
    return sorted(roots)


@dataclass(frozen=True)
class _Found:
    """One checkpoint of a listing, with its objects sorted into own and not."""

    info: CheckpointInfo
    own: list[StoredObject]  # .metadata first
    nested: list[str]  # relative directories of checkpoints inside it
    newest_write: datetime | None  # newest own object (marker included)
    committed: datetime | None  # when its .metadata was written
    marker: datetime | None  # when its save marker was written, if one is there


def _describe(
    client: S3Client,
    bucket: str,
    root_head: str,
    objects: list[StoredObject],
    nested: list[str],
) -> _Found:
    """Sort the objects under one checkpoint (``root_head`` ends in ``/`` or is ``""``) into its own and the rest."""
    by_rel = {obj.key[len(root_head) :]: obj for obj in objects if obj.key.startswith(root_head)}
    metadata = by_rel.get(METADATA_NAME)
    referenced: dict[str, int] | None = None
    damaged: str | None = None
    if metadata is not None:
        where = f"s3://{bucket}/{metadata.key}"
        try:
            referenced = referenced_objects(read_object(client, bucket, metadata.key), where)
        except CheckpointDamagedError as err:
            damaged = f"{METADATA_NAME} is unreadable ({err})"

    def is_own(rel: str) -> bool:
        if rel == METADATA_NAME or is_own_object(rel) or (referenced is not None and rel in referenced):
            return True
        return is_shard_name(rel) and not any(_inside(_parent(rel), n) for n in nested)

    own = sorted((obj for rel, obj in by_rel.items() if is_own(rel)), key=lambda o: (o is not metadata, o.key))
    counted = own
    strays: list[StoredObject] = []
    if metadata is not None and referenced is not None:
        needed = referenced
        counted = [metadata] + [by_rel[rel] for rel in sorted(needed) if rel in by_rel]
        strays = [
            obj
            for obj in own
            if obj.key[len(root_head) :] not in needed
            and obj is not metadata
            and not is_empty_shard(obj.key[len(root_head) :], obj.size)
        ]
        missing = sorted(rel for rel in needed if rel not in by_rel)
        short = sorted(rel for rel, size in needed.items() if rel in by_rel and by_rel[rel].size < size)
        if missing:
            damaged = f"{len(missing)} of {len(needed)} referenced objects missing (e.g. {missing[0]})"
        elif short:
            rel = short[0]
            damaged = (
                f"{len(short)} referenced objects shorter than the metadata needs (e.g. {rel}: "
                f"{by_rel[rel].size} bytes of {needed[rel]})"
            )
    path = root_head.rstrip("/")
    uri = f"s3://{bucket}/{path}" if path else f"s3://{bucket}"
    info = CheckpointInfo(
        uri=uri,
        step=parse_step(path),
        complete=metadata is not None,
        size_bytes=sum(obj.size for obj in counted),
        num_objects=len(counted),
        last_modified=max((obj.last_modified for obj in counted), default=None),
        stray_objects=len(strays),
        stray_bytes=sum(obj.size for obj in strays),
        damaged=damaged,
    )
    marker = by_rel.get(SAVING_MARKER)
    return _Found(
        info,
        own,
        nested,
        newest_write=max((obj.last_modified for obj in own), default=None),
        committed=metadata.last_modified if metadata else None,
        marker=marker.last_modified if marker else None,
    )


def _has_direct_signal(objects: list[StoredObject], children: list[str], head: str) -> bool:
    """Could ``head`` be a checkpoint, judging by what sits directly under it?"""
    names = {obj.key[len(head) :] for obj in objects}
    if METADATA_NAME in names or SAVING_MARKER in names or any(is_shard_name(name) for name in names):
        return True
    return head + UPLOAD_MARKERS + "/" in children


def _find_at(client: S3Client, bucket: str, head: str) -> _Found | None:
    """The checkpoint whose prefix is ``head`` (ending in ``/`` or ``""``), or ``None`` if it is not one."""
    objects, children = _listing(client, bucket, head)
    if not _has_direct_signal(objects, children, head):
        return None
    if children:
        objects = list(_objects(list_pages(client, bucket, head)))
    roots = checkpoint_roots(obj.key[len(head) :] for obj in objects)
    if "" not in roots:
        return None  # shards beside deeper checkpoints: a run, not a checkpoint
    return _describe(client, bucket, head, objects, [root for root in roots if root])


def _holds_checkpoints(client: S3Client, bucket: str, head: str) -> bool:
    """Whether anything under ``head`` looks like a checkpoint (stops at the first sign)."""
    for obj in _objects(list_pages(client, bucket, head)):
        parts = obj.key[len(head) :].split("/")
        if parts[-1] in (METADATA_NAME, SAVING_MARKER) or UPLOAD_MARKERS in parts[:-1] or is_shard_name(parts[-1]):
            return True
    return False


def _sort_key(info: CheckpointInfo) -> tuple[bool, int, datetime, str]:
    return (info.step is not None, info.step or 0, info.last_modified or _NEVER, info.uri)


@dataclass(frozen=True)
class Survey:
    """What a prefix holds, for telling a user where checkpoints are.

    Attributes:
        uri: the prefix surveyed.
        checkpoints: the checkpoints directly under it, oldest step first.
        is_checkpoint: the prefix is a checkpoint itself.
        runs: when ``checkpoints`` is empty, the sub-prefixes (relative,
            ending in ``/``) that hold checkpoints deeper down.
    """

    uri: str
    checkpoints: list[CheckpointInfo]
    is_checkpoint: bool = False
    runs: list[str] = field(default_factory=list)


def _found_under(client: S3Client, base: S3Uri) -> tuple[list[_Found], bool, list[str]]:
    """Every checkpoint directly under ``base``, whether ``base`` is one itself, and its sub-prefixes.

    Usually each sub-prefix decides alone whether it is a checkpoint. When
    ``base`` itself looks like one, its sub-prefixes may be its own shard
    directories (a prefix strategy's), which alone would look like
    unfinished saves: then the whole base is listed and judged at once.
    """
    head = _head(base)
    objects, children = _listing(client, base.bucket, head)
    if _has_direct_signal(objects, children, head):
        everything = list(_objects(list_pages(client, base.bucket, head)))
        roots = checkpoint_roots(obj.key[len(head) :] for obj in everything)
        direct = [root for root in roots if root and "/" not in root]
        found = [
            _describe(
                client,
                base.bucket,
                f"{head}{root}/",
                everything,
                [r[len(root) + 1 :] for r in roots if _strictly_inside(r, root)],
            )
            for root in direct
        ]
        return sorted(found, key=lambda f: _sort_key(f.info)), "" in roots, children
    with ThreadPoolExecutor(
        _LISTING_THREADS, thread_name_prefix="s3dcp-list", initializer=leave_signals_to_main_thread
    ) as pool:
        found = [f for f in pool.map(lambda child: _find_at(client, base.bucket, child), children) if f is not None]
    return sorted(found, key=lambda f: _sort_key(f.info)), False, children


def survey(
    base_uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> Survey:
    """The checkpoints directly under ``base_uri``, or, if there are none, where checkpoints are."""
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    found, itself, children = _found_under(client, base)
    head = _head(base)
    runs: list[str] = []
    if not found and not itself:
        with ThreadPoolExecutor(
            _LISTING_THREADS, thread_name_prefix="s3dcp-list", initializer=leave_signals_to_main_thread
        ) as pool:
            holds = list(pool.map(lambda child: _holds_checkpoints(client, base.bucket, child), children))
        runs = [child[len(head) :] for child, yes in zip(children, holds) if yes]
    return Survey(str(base), [f.info for f in found], itself, runs)


def list_checkpoints(
    base_uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[CheckpointInfo]:
    """Every checkpoint directly under ``base_uri``, complete or not, oldest step first.

    Checkpoints without a ``step_N`` name come first, in modification order;
    ``step_10`` sorts after ``step_9``. A sub-prefix that holds checkpoints
    (a run) is not one itself, so listing a bucket of runs returns nothing:
    list each run instead (:func:`survey` says which sub-prefixes hold some).
    """
    base = parse_s3_uri(base_uri)
    found, _, _ = _found_under(_client(region, s3client_config), base)
    return [f.info for f in found]


def checkpoint_info(
    uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> CheckpointInfo:
    """The checkpoint at ``uri``, counted as :func:`list_checkpoints` counts it (strays, damage).

    Raises:
        CheckpointNotFoundError: ``uri`` is not a checkpoint.
    """
    target = parse_s3_uri(uri)
    found = _find_at(_client(region, s3client_config), target.bucket, _head(target))
    if found is None:
        raise CheckpointNotFoundError(
            f"{target} is not a checkpoint (no {METADATA_NAME}, DCP shards or s3dcp save marker directly under it); "
            f"see what it holds with: s3dcp ls {target}",
            bucket=target.bucket,
            key=target.prefix,
        )
    return found.info


def _committed_at(client: S3Client, bucket: str, head: str) -> datetime | None:
    """When ``head`` + ``.metadata`` was written, or ``None`` if it does not exist (one small listing)."""
    key = head + METADATA_NAME
    page = client.call("list_objects_v2", bucket, Prefix=key, MaxKeys=1)
    for entry in page.get("Contents", []):
        if entry["Key"] == key:
            return entry["LastModified"]  # type: ignore[no-any-return]
    return None


def latest_checkpoint(
    base_uri: str | os.PathLike[str],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> str | None:
    """The ``s3://`` URI of the newest complete checkpoint under ``base_uri``, or ``None``.

    Newest means highest ``step_N``; when no stepped checkpoint is complete,
    the one committed last. Incomplete saves are never returned. Costs one
    listing of the sub-prefixes and one small listing per checkpoint tried.
    """
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    _, children = _listing(client, base.bucket, _head(base))
    stepped = sorted(((step, prefix) for prefix in children if (step := parse_step(prefix)) is not None), reverse=True)
    for _, prefix in stepped:
        if _committed_at(client, base.bucket, prefix) is not None:
            return f"s3://{base.bucket}/{prefix.rstrip('/')}"
    committed = [
        (when, prefix)
        for prefix in children
        if parse_step(prefix) is None and (when := _committed_at(client, base.bucket, prefix)) is not None
    ]
    if not committed:
        return None
    return f"s3://{base.bucket}/{max(committed)[1].rstrip('/')}"


# -- deleting checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class Removal:
    """What deleting one checkpoint removes: exactly ``objects``, its ``.metadata`` first.

    Attributes:
        bucket: the bucket it is in.
        checkpoint: the checkpoint, as listed.
        objects: its own objects, ``.metadata`` first.
    """

    bucket: str
    checkpoint: CheckpointInfo
    objects: tuple[StoredObject, ...]

    @property
    def size_bytes(self) -> int:
        return sum(obj.size for obj in self.objects)


def _removal(bucket: str, found: _Found) -> Removal:
    return Removal(bucket, found.info, tuple(found.own))


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _and_list(names: list[str]) -> str:
    shown = names[:_SHOWN] + ([f"{len(names) - _SHOWN} more"] if len(names) > _SHOWN else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def plan_delete(
    uri: str | os.PathLike[str],
    *,
    recursive: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[Removal]:
    """What :func:`delete_checkpoint` would delete at ``uri``; deletes nothing.

    Raises:
        CheckpointNotFoundError: nothing is stored at ``uri``, or no
            checkpoint (with ``recursive``: none at or below it).
        ValueError: without ``recursive``, ``uri`` is not a checkpoint but
            holds some, or is a checkpoint that also holds other objects or
            nested checkpoints.
    """
    target = parse_s3_uri(uri)
    client = _client(region, s3client_config)
    head = _head(target)
    objects = list(_objects(list_pages(client, target.bucket, head)))
    if not objects:
        raise CheckpointNotFoundError(
            f"{target} holds no objects; nothing to delete (check the path with: s3dcp ls {_parent_uri(target)})",
            bucket=target.bucket,
            key=target.prefix,
        )
    rels = [obj.key[len(head) :] for obj in objects]
    if not _is_marked(set(rels)):
        enclosing = _enclosing_checkpoint(client, target)
        if enclosing is not None:
            raise ValueError(
                f"{target} lies inside the checkpoint {enclosing} (its objects are that checkpoint's); "
                f"nothing was deleted. Delete the whole checkpoint with: s3dcp rm {enclosing}"
            )
    roots = checkpoint_roots(rels)
    if not roots:
        raise CheckpointNotFoundError(
            f"{target} is not a checkpoint and holds none (no {METADATA_NAME}, DCP shards or s3dcp save marker); "
            f"s3dcp deletes checkpoints only, and nothing was deleted. "
            f"It holds {_plural(len(objects), 'other object')}: {_examples(rels)}",
            bucket=target.bucket,
            key=target.prefix,
        )
    if not recursive and "" not in roots:
        raise ValueError(
            f"{target} is not a checkpoint; it holds {_plural(len(roots), 'checkpoint')} "
            f"({_examples([r + '/' for r in roots])}). Nothing was deleted. Delete one with "
            f"s3dcp rm {target.child(roots[0])}, or all of them (and nothing else) with s3dcp rm --recursive {target}"
        )
    found = [
        _describe(
            client,
            target.bucket,
            f"{head}{root}/" if root else head,
            objects,
            [r[len(root) + 1 :] if root else r for r in roots if _strictly_inside(r, root)],
        )
        for root in roots
    ]
    if not recursive:
        owned = {obj.key for f in found for obj in f.own}
        others = [rel for obj, rel in zip(objects, rels) if obj.key not in owned]
        nested = [r + "/" for r in roots if r]
        if nested or others:
            held = []
            if others:
                verb = "is" if len(others) == 1 else "are"
                held.append(f"{_plural(len(others), 'object')} that {verb} not the checkpoint's ({_examples(others)})")
            if nested:
                held.append(f"{_plural(len(nested), 'nested checkpoint')} ({_examples(nested)})")
            raise ValueError(
                f"{target} is a checkpoint but also holds {' and '.join(held)}. Nothing was deleted. "
                f"--recursive deletes the checkpoint and every checkpoint inside it, and leaves the other objects"
            )
    return [_removal(target.bucket, f) for f in found]


def _is_marked(names: set[str]) -> bool:
    """Whether relative names directly under a prefix include a commit or a save in progress."""
    return bool(names & {METADATA_NAME, SAVING_MARKER}) or any(n.startswith(UPLOAD_MARKERS + "/") for n in names)


def _enclosing_checkpoint(client: S3Client, target: S3Uri) -> S3Uri | None:
    """The nearest prefix above ``target`` that is a committed or marked checkpoint (one listing per level)."""
    parts = target.prefix.split("/") if target.prefix else []
    for depth in range(len(parts) - 1, -1, -1):
        above = S3Uri(target.bucket, "/".join(parts[:depth]))
        head = _head(above)
        page = client.call("list_objects_v2", target.bucket, Prefix=head + ".", Delimiter="/")
        names = {entry["Key"][len(head) :] for entry in page.get("Contents", [])}
        names |= {entry["Prefix"][len(head) :] for entry in page.get("CommonPrefixes", [])}
        if _is_marked(names):
            return above
    return None


def _parent_uri(uri: S3Uri) -> S3Uri:
    return S3Uri(uri.bucket, uri.prefix.rsplit("/", 1)[0] if "/" in uri.prefix else "")


def remove(
    removals: list[Removal],
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> int:
    """Delete exactly the objects of ``removals`` (from a ``plan_*`` call); return how many.

    Every ``.metadata`` goes first, so a deletion cut short leaves incomplete
    checkpoints, never a complete-looking one with shards missing. Objects
    that appeared since the plan was made are not touched.
    """
    client = _client(region, s3client_config)
    by_bucket: dict[str, tuple[list[str], list[str]]] = {}
    for removal in removals:
        first, rest = by_bucket.setdefault(removal.bucket, ([], []))
        for obj in removal.objects:
            (first if obj.key.rsplit("/", 1)[-1] == METADATA_NAME else rest).append(obj.key)
    count = 0
    for bucket, (first, rest) in by_bucket.items():
        delete_keys(client, bucket, first)
        delete_keys(client, bucket, rest)
        count += len(first) + len(rest)
    return count


def delete_checkpoint(
    uri: str | os.PathLike[str],
    *,
    recursive: bool = False,
    dry_run: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> int:
    """Delete the checkpoint at ``uri`` (its own objects only); return how many objects went.

    Refuses, before deleting anything, a prefix that is not a checkpoint, or
    a checkpoint that also holds other objects or nested checkpoints; with
    ``recursive`` it deletes every checkpoint at or below ``uri`` and still
    leaves every object that belongs to none. ``.metadata`` goes first.
    With ``dry_run`` nothing is deleted and the count is what would go.
    Errors: see :func:`plan_delete`.
    """
    plan = plan_delete(uri, recursive=recursive, region=region, s3client_config=s3client_config)
    if dry_run:
        return sum(len(removal.objects) for removal in plan)
    return remove(plan, region=region, s3client_config=s3client_config)


# -- pruning -------------------------------------------------------------------------


def _refuse_runs(client: S3Client, base: S3Uri, children: list[str], verb: str) -> None:
    """Raise if ``base`` holds no checkpoints directly but some deeper (it holds runs)."""
    head = _head(base)
    runs = [child[len(head) :] for child in children if _holds_checkpoints(client, base.bucket, child)]
    if runs:
        raise ValueError(
            f"no checkpoints directly under {base}; {_and_list(runs)} hold checkpoints, so {base} holds runs and "
            f"nothing was deleted. Give one run: s3dcp {verb} {base.child(runs[0])} ..."
        )


def is_settled(writes: Iterable[datetime | None], cutoff: datetime) -> bool:
    """True if every known write (object, marker, upload start or part) happened before ``cutoff``.

    An incomplete checkpoint is deleted only when no process could still be
    writing it; with no known write at all, nothing says it is settled.
    """
    known = [when for when in writes if when is not None]
    return bool(known) and max(known) < cutoff


def _open_uploads(client: S3Client, bucket: str, head: str) -> Iterator[dict[str, Any]]:
    key_marker: str | None = None
    upload_marker: str | None = None
    while True:
        params: dict[str, Any] = {"Prefix": head}
        if key_marker:
            params.update(KeyMarker=key_marker, UploadIdMarker=upload_marker or "")
        page = client.call("list_multipart_uploads", bucket, **params)
        yield from page.get("Uploads", [])
        if not page.get("IsTruncated"):
            return
        key_marker, upload_marker = page.get("NextKeyMarker"), page.get("NextUploadIdMarker")


def _upload_writes(client: S3Client, bucket: str, upload: dict[str, Any]) -> Iterator[datetime]:
    """When an upload started and when each of its parts arrived."""
    yield upload["Initiated"]
    marker = 0
    while True:
        page = client.call("list_parts", bucket, upload["Key"], UploadId=upload["UploadId"], PartNumberMarker=marker)
        for part in page.get("Parts", []):
            yield part["LastModified"]
        if not page.get("IsTruncated"):
            return
        marker = int(page.get("NextPartNumberMarker") or 0)


def plan_prune(
    base_uri: str | os.PathLike[str],
    keep: int,
    *,
    grace: timedelta = DEFAULT_GRACE,
    include_unnumbered: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[Removal]:
    """What :func:`prune` would delete under ``base_uri``, oldest first; deletes nothing."""
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be an int >= 1 (the newest complete checkpoint always stays), got {keep!r}")
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    found, itself, children = _found_under(client, base)
    if itself:
        raise ValueError(
            f"{base} is a checkpoint itself; prune works on the prefix that holds checkpoints, "
            f"e.g. s3dcp prune {_parent_uri(base)} ... (nothing was deleted)"
        )
    if not found:
        _refuse_runs(client, base, children, "prune")
    eligible = [f for f in found if include_unnumbered or f.info.step is not None]
    complete = [f for f in eligible if f.info.complete]
    if include_unnumbered:  # steps and names do not compare: newest is the one committed last
        complete.sort(key=lambda f: (f.committed or _NEVER, -1 if f.info.step is None else f.info.step, f.info.uri))
    cutoff = datetime.now(timezone.utc) - grace
    # a complete one whose save marker is younger than the grace is being saved over: it stays
    doomed = [f for f in complete[:-keep] if f.marker is None or is_settled([f.marker], cutoff)]
    incomplete = [f for f in eligible if not f.info.complete and is_settled([f.newest_write], cutoff)]
    if incomplete:
        heads = [_head(parse_s3_uri(f.info.uri)) for f in incomplete]
        uploads: dict[str, list[dict[str, Any]]] = {head: [] for head in heads}
        for upload in _open_uploads(client, base.bucket, _head(base)):
            for head in heads:
                if upload["Key"].startswith(head):
                    uploads[head].append(upload)
        incomplete = [
            f
            for f, head in zip(incomplete, heads)
            if all(is_settled(_upload_writes(client, base.bucket, u), cutoff) for u in uploads[head])
        ]
    chosen = {id(f) for f in doomed + incomplete}
    return [_removal(base.bucket, f) for f in found if id(f) in chosen]


def prune(
    base_uri: str | os.PathLike[str],
    keep: int,
    *,
    dry_run: bool = False,
    grace: timedelta = DEFAULT_GRACE,
    include_unnumbered: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[CheckpointInfo]:
    """Delete all but the newest ``keep`` complete ``step_N`` checkpoints under ``base_uri``.

    Newest is by step. The newest complete checkpoint always stays (``keep``
    must be at least 1). Checkpoints without a step in their name (``best``,
    ``final``) are never touched unless ``include_unnumbered``; then all
    complete ones are ranked by when they were committed. Incomplete
    checkpoints go too, but only when no process could still be writing
    them: their objects, their save marker and any multipart upload open
    under them (start and newest part) are all older than ``grace``. A
    complete checkpoint whose save marker is younger than ``grace`` (a save
    over it is running) stays. Each checkpoint loses only its own objects,
    ``.metadata`` first; anything else under it stays.

    Returns what was deleted, or with ``dry_run`` what would be, oldest
    first. Raises ``ValueError`` when ``base_uri`` holds runs rather than
    checkpoints.
    """
    plan = plan_prune(
        base_uri,
        keep,
        grace=grace,
        include_unnumbered=include_unnumbered,
        region=region,
        s3client_config=s3client_config,
    )
    if not dry_run:
        remove(plan, region=region, s3client_config=s3client_config)
    return [removal.checkpoint for removal in plan]


# -- abandoned uploads ---------------------------------------------------------------


@dataclass(frozen=True)
class AbandonedUpload:
    """A multipart upload nobody completed: its parts are stored, and billed, until aborted."""

    key: str
    upload_id: str
    initiated: datetime


@dataclass(frozen=True)
class UploadSweep:
    """What :func:`gc` found under a prefix.

    Attributes:
        bucket: the bucket.
        stale: checkpoint uploads older than the threshold: the ones to abort.
        young: checkpoint uploads started more recently (a save may be running).
        not_checkpoints: uploads of other objects, never aborted here.
    """

    bucket: str
    stale: list[AbandonedUpload]
    young: int
    not_checkpoints: int


def is_checkpoint_object(key: str) -> bool:
    """Whether a key is named like part of a checkpoint: a shard, a ``.metadata`` or an s3dcp marker."""
    parts = key.split("/")
    return is_shard_name(parts[-1]) or parts[-1] == METADATA_NAME or any(is_own_object(part) for part in parts)


def plan_gc(
    base_uri: str | os.PathLike[str],
    older_than: timedelta = DEFAULT_GRACE,
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> UploadSweep:
    """Which multipart uploads under ``base_uri`` :func:`gc` would abort; aborts nothing."""
    base = parse_s3_uri(base_uri)
    client = _client(region, s3client_config)
    cutoff = datetime.now(timezone.utc) - older_than
    stale: list[AbandonedUpload] = []
    young = others = 0
    for upload in _open_uploads(client, base.bucket, _head(base)):
        if not is_checkpoint_object(upload["Key"]):
            others += 1
        elif upload["Initiated"] < cutoff:
            stale.append(AbandonedUpload(upload["Key"], upload["UploadId"], upload["Initiated"]))
        else:
            young += 1
    return UploadSweep(base.bucket, stale, young, others)


def abort_uploads(
    sweep: UploadSweep,
    *,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> None:
    """Abort exactly the stale uploads of ``sweep`` (from :func:`plan_gc`)."""
    client = _client(region, s3client_config)
    for upload in sweep.stale:
        client.call("abort_multipart_upload", sweep.bucket, upload.key, UploadId=upload.upload_id)


def gc(
    base_uri: str | os.PathLike[str],
    older_than: timedelta = DEFAULT_GRACE,
    *,
    dry_run: bool = False,
    region: str | None = None,
    s3client_config: S3ClientConfig | None = None,
) -> list[AbandonedUpload]:
    """Abort checkpoint multipart uploads under ``base_uri`` started more than ``older_than`` ago.

    A save killed mid-upload (SIGKILL, preemption) cannot abort its own
    uploads; their parts stay stored until aborted here (or by a bucket
    lifecycle rule). Only uploads of objects named like a checkpoint's
    (shards, ``.metadata``, ``.s3dcp-*``) are aborted: other programs'
    uploads under the same prefix are left alone, and so are younger
    uploads, which may belong to a save still running. Returns what was
    (or, with ``dry_run``, would be) aborted.
    """
    sweep = plan_gc(base_uri, older_than, region=region, s3client_config=s3client_config)
    if not dry_run:
        abort_uploads(sweep, region=region, s3client_config=s3client_config)
    return sweep.stale
