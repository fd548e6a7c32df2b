"""The ``s3dcp`` command: list, inspect, verify, copy and clean up checkpoints.

Exit codes scripts can rely on: 0 success; 1 the operation failed (no such
checkpoint, S3 refused, ...), with one line on stderr; 2 bad arguments;
3 ``verify`` found damaged or missing data.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from . import __version__
from .catalog import delete_checkpoint, gc, list_checkpoints, prune
from .config import S3ClientConfig
from .copy import plan_copy, run_copy
from .errors import S3DCPError
from .integrity import get_checksum
from .progress import Progress, human_bytes
from .reader import S3StorageReader
from .verify import verify_checkpoint

EXIT_FAILED = 1
EXIT_DAMAGED = 3
_RANK_OF_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")


def _config(args: argparse.Namespace) -> S3ClientConfig | None:
    if not (args.endpoint_url or args.profile):
        return None
    return S3ClientConfig(endpoint_url=args.endpoint_url, profile=args.profile)


def _s3(args: argparse.Namespace) -> dict[str, Any]:
    return {"region": args.region, "s3client_config": _config(args)}


def cmd_ls(args: argparse.Namespace) -> int:
    found = list_checkpoints(args.uri, **_s3(args))
    if not found:
        print(f"no checkpoints under {args.uri}", file=sys.stderr)
        return 0
    rows = [("STEP", "COMPLETE", "SIZE", "OBJECTS", "MODIFIED (UTC)", "CHECKPOINT")]
    for info in found:
        modified = info.last_modified.strftime("%Y-%m-%d %H:%M:%S") if info.last_modified else "-"
        rows.append((
            "-" if info.step is None else str(info.step), "yes" if info.complete else "NO",
            human_bytes(info.size_bytes), str(info.num_objects), modified, info.uri,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    reader = S3StorageReader(args.region, args.uri, _config(args))
    metadata = reader.read_metadata()
    reader.set_up_storage_reader(metadata, is_coordinator=True)
    storage = reader.storage_data
    objects = {info.relative_path for info in storage.values()}
    ranks = {int(m.group(1)) for path in objects if (m := _RANK_OF_SHARD.search(path))}
    digests = sum(1 for info in storage.values() if get_checksum(info))
    print(f"checkpoint   {reader.uri}")
    print(f"items        {len(metadata.state_dict_metadata)} ({len(storage)} stored pieces)")
    print(f"size         {human_bytes(sum(info.length for info in storage.values()))} in {len(objects)} objects")
    print(f"written by   {len(ranks) or '?'} rank(s)" + (f", ranks {min(ranks)}-{max(ranks)}" if ranks else ""))
    print("digests      " + (f"xxh3-64 on {digests} of {len(storage)} pieces (written by s3dcp)" if digests
                             else "none (written by another DCP writer; verify cannot check it)"))
    print()
    rows = [("KEY", "KIND", "DTYPE", "SHAPE", "SIZE")]
    for name in sorted(metadata.state_dict_metadata):
        meta = metadata.state_dict_metadata[name]
        size = getattr(meta, "size", None)
        properties = getattr(meta, "properties", None)
        if size is not None and properties is not None:
            dtype = str(properties.dtype).removeprefix("torch.")
            numel = 1
            for dim in size:
                numel *= dim
            nbytes = numel * properties.dtype.itemsize
            rows.append((name, "tensor", dtype, "x".join(map(str, size)) or "scalar", human_bytes(nbytes)))
        else:
            rows.append((name, "object", "-", "-", "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    progress = Progress("verified", None, None, sys.stderr)
    report = verify_checkpoint(args.uri, on_object=progress.object_done, on_bytes=progress.add_bytes,
                               on_totals=progress.set_totals, **_s3(args))
    progress.done()
    if getattr(args, "json", False):
        document = {
            "uri": report.uri, "items": report.items, "checked": report.checked, "unchecked": report.unchecked,
            "bytes_read": report.bytes_read,
            "problems": [{"key": p.key, "item": p.item, "detail": p.detail} for p in report.problems],
            "ok": report.ok,
        }
        print(json.dumps(document, indent=2))
        return EXIT_DAMAGED if report.problems else 0
    for problem in report.problems:
        print(f"s3dcp: damaged: {problem}", file=sys.stderr)
    summary = (f"{report.uri}: {report.checked} of {report.items} items match their digests, "
               f"{human_bytes(report.bytes_read)} read")
    if report.unchecked:
        summary += f"; {report.unchecked} items have no digest to check"
    if report.problems:
        print(f"{summary}; {len(report.problems)} problem(s)", file=sys.stderr)
        return EXIT_DAMAGED
    print(f"{summary}: OK")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    plan = plan_copy(args.source, args.destination, overwrite=args.overwrite, overwrite_advice="add --overwrite",
                     **_s3(args))
    if getattr(args, "dry_run", False):
        for line in plan.describe():
            print(line)
        return 0
    progress = Progress("copied", len(plan.objects) + 1, plan.total_bytes, sys.stderr)
    report = run_copy(plan, on_object=progress.object_done, on_bytes=progress.add_bytes)
    progress.done()
    print(f"copied {args.source} -> {args.destination}: {report.objects} objects, {human_bytes(report.bytes_copied)}")
    if report.strays_left:
        print(f"left behind {report.strays_left} stray object(s), {human_bytes(report.stray_bytes_left)}, "
              f"under {args.source}: shard objects its .metadata does not reference (leftovers of earlier saves)")
    if report.strays_removed:
        print(f"removed {report.strays_removed} stray object(s), {human_bytes(report.stray_bytes_removed)}, "
              f"from {args.destination}: shard objects of the replaced checkpoint the new one does not reference")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    removed = delete_checkpoint(args.uri, **_s3(args))
    print(f"deleted {removed} objects under {args.uri}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    doomed = prune(args.uri, args.keep, dry_run=args.dry_run, grace=timedelta(hours=args.grace_hours), **_s3(args))
    verb = "would delete" if args.dry_run else "deleted"
    for info in doomed:
        state = "complete" if info.complete else "incomplete"
        print(f"{verb} {info.uri} ({state}, {human_bytes(info.size_bytes)})")
    print(f"{verb} {len(doomed)} checkpoint(s) under {args.uri}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    stale = gc(args.uri, timedelta(hours=args.older_than_hours), dry_run=args.dry_run, **_s3(args))
    verb = "would abort" if args.dry_run else "aborted"
    for upload in stale:
        print(f"{verb} upload of {upload.key} started {upload.initiated:%Y-%m-%d %H:%M:%S}")
    print(f"{verb} {len(stale)} abandoned multipart upload(s) under {args.uri}")
    return 0


def _non_negative_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"hours must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (the newest complete checkpoint always stays), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--region", help="AWS region (default: AWS_REGION / the profile's)")
    common.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL)")
    common.add_argument("--profile", help="AWS profile for credentials (default: the standard chain)")
    common.add_argument("-v", "--verbose", action="store_true", help="log each S3 phase to stderr")

    parser = argparse.ArgumentParser(
        prog="s3dcp", description="Manage PyTorch Distributed Checkpoints stored in S3.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s3dcp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("ls", cmd_ls, "list the checkpoints under a prefix: step, complete, size, objects, time"
            ).add_argument("uri", help="s3://bucket/prefix holding step_N checkpoints")
    command("info", cmd_info, "summarize a checkpoint's metadata: keys, dtypes, shapes, sizes, ranks"
            ).add_argument("uri", help="s3://bucket/prefix of one checkpoint")
    command("verify", cmd_verify, "read back every item and check its digest (exit 3 on damage)"
            ).add_argument("uri", help="s3://bucket/prefix of one checkpoint")
    cp = command("cp", cmd_cp, "copy a checkpoint: local directory <-> S3, or S3 -> S3 (.metadata last)")
    cp.add_argument("source", help="s3://bucket/prefix or a local DCP checkpoint directory")
    cp.add_argument("destination", help="s3://bucket/prefix or a local directory")
    cp.add_argument("--overwrite", action="store_true", help="replace a complete checkpoint at the destination")
    command("rm", cmd_rm, "delete a checkpoint (its .metadata first)").add_argument("uri")
    pr = command("prune", cmd_prune, "delete all but the newest N complete checkpoints")
    pr.add_argument("uri", help="s3://bucket/prefix holding step_N checkpoints")
    pr.add_argument("--keep", type=_positive_int, required=True, help="complete checkpoints to keep (>= 1)")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    pr.add_argument("--grace-hours", type=_non_negative_hours, default=6.0,
                    help="leave incomplete checkpoints changed more recently than this (a save may be running); "
                         "default 6")
    g = command("gc", cmd_gc, "abort multipart uploads left behind by killed saves")
    g.add_argument("uri", help="s3://bucket/prefix to clean under")
    g.add_argument("--older-than-hours", type=_non_negative_hours, default=6.0,
                   help="only uploads started longer ago than this (default 6)")
    g.add_argument("--dry-run", action="store_true", help="only say what would be aborted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("s3dcp").setLevel(logging.INFO)
    try:
        return int(args.handler(args))
    except (S3DCPError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"s3dcp: error: {message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("s3dcp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
