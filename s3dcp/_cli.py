"""The ``s3dcp`` command: list, inspect, verify, copy and clean up checkpoints.

A checkpoint is a prefix with a .metadata (complete), or, without one, with
DCP shards or s3dcp's save marker directly under it (incomplete: a save that
died or is running). A prefix with checkpoints below it holds runs and is
never taken for a checkpoint.

What the destructive commands delete (each takes --dry-run, and asks first
when stdin is a terminal; --yes skips the question):
  rm URI      the checkpoint at URI: its .metadata (first), the objects the
              metadata references, stray shards of earlier saves to the same
              path and s3dcp's markers. Refuses a prefix that is not a
              checkpoint or lies inside one, or a checkpoint that also holds
              other objects or nested checkpoints; --recursive then deletes
              every checkpoint at or below URI the same way. Other objects
              (logs, data) always stay.
  prune URI   whole step_N checkpoints directly under URI, as rm would delete
              them, all but the newest --keep complete ones (the newest always
              stays), plus incomplete ones that nothing has written to for
              --grace-hours. Unnumbered checkpoints (best, final) stay unless
              --include-unnumbered.
  gc URI      nothing stored: aborts multipart uploads of checkpoint objects
              (shards, .metadata, .s3dcp-*) under URI started more than
              --older-than-hours ago. Other uploads stay.

Exit codes scripts can rely on: 0 success (also when nothing matched);
1 the operation failed, or a question was answered no (nothing deleted),
with one line on stderr; 2 bad arguments; 3 verify or info found damaged or
missing data; 141 the output pipe was closed (e.g. by head).

Global options (--endpoint-url, --region, --profile, -v) go before or
after the command.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from s3dcp import __version__
from s3dcp._catalog import (
    CheckpointInfo,
    Removal,
    abort_uploads,
    checkpoint_info,
    plan_delete,
    plan_gc,
    plan_prune,
    remove,
    survey,
)
from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._errors import CheckpointDamagedError, S3DCPError
from s3dcp._progress import Progress, human_bytes
from s3dcp._uri import parse_s3_uri

EXIT_FAILED = 1
EXIT_DAMAGED = 3
EXIT_PIPE_CLOSED = 128 + 13  # what a shell reports for a command ended by SIGPIPE
_RANK_OF_SHARD = re.compile(r"__(\d+)_\d+\.distcp$")


def _config(args: argparse.Namespace) -> S3ClientConfig | None:
    if not (args.endpoint_url or args.profile):
        return None
    return S3ClientConfig(endpoint_url=args.endpoint_url, profile=args.profile)


def _s3(args: argparse.Namespace) -> dict[str, Any]:
    return {"region": args.region, "s3client_config": _config(args)}


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _info_json(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "uri": info.uri,
        "step": info.step,
        "complete": info.complete,
        "size_bytes": info.size_bytes,
        "num_objects": info.num_objects,
        "last_modified": info.last_modified.isoformat() if info.last_modified else None,
        "stray_objects": info.stray_objects,
        "stray_bytes": info.stray_bytes,
        "damaged": info.damaged,
    }


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def cmd_ls(args: argparse.Namespace) -> int:
    found = survey(args.uri, **_s3(args))
    if args.json:
        print(json.dumps([_info_json(info) for info in found.checkpoints], indent=2))
    if not found.checkpoints:
        uri = found.uri
        if found.is_checkpoint:
            hint = f"{uri} is a checkpoint itself (ls lists the checkpoints under a prefix); see: s3dcp info {uri}"
        elif found.runs:
            shown = found.runs[:5] + ([f"{len(found.runs) - 5} more"] if len(found.runs) > 5 else [])
            hint = (
                f"no checkpoints directly under {uri}; {_and(shown)} hold checkpoints: "
                f"s3dcp ls {uri.rstrip('/')}/{found.runs[0].rstrip('/')}"
            )
        else:
            hint = f"no checkpoints under {uri}"
        print(hint, file=sys.stderr)
        return 0
    if args.json:
        return 0
    rows = [("STEP", "COMPLETE", "SIZE", "OBJECTS", "STRAYS", "MODIFIED (UTC)", "CHECKPOINT")]
    for info in found.checkpoints:
        state = "DAMAGED" if info.damaged else "yes" if info.complete else "NO"
        strays = f"{info.stray_objects} ({human_bytes(info.stray_bytes)})" if info.stray_objects else "-"
        rows.append(
            (
                "-" if info.step is None else str(info.step),
                state,
                human_bytes(info.size_bytes),
                str(info.num_objects),
                strays,
                _when(info.last_modified),
                info.uri,
            )
        )
    _table(rows)
    for info in found.checkpoints:
        if info.damaged:
            print(f"s3dcp: damaged: {info.uri}: {info.damaged} (details: s3dcp verify {info.uri})", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from s3dcp._format.integrity import get_checksum
    from s3dcp._load import check_records, fetch_metadata
    from s3dcp._s3.client import S3Client

    where = parse_s3_uri(args.uri)
    metadata, _ = fetch_metadata(S3Client(resolve_settings(args.region, _config(args))), where)
    catalogued = checkpoint_info(args.uri, **_s3(args))
    try:
        storage = check_records(metadata, where).storage_data
    except CheckpointDamagedError as err:
        report: dict[str, Any] = dict(_info_json(catalogued), damaged=catalogued.damaged or str(err))
        if args.json:
            print(json.dumps(report, indent=2))
        print(f"s3dcp: damaged: {catalogued.uri}: {report['damaged']}", file=sys.stderr)
        return EXIT_DAMAGED
    objects = {info.relative_path for info in storage.values()}
    ranks = {int(m.group(1)) for path in objects if (m := _RANK_OF_SHARD.search(path))}
    digests = sum(1 for info in storage.values() if get_checksum(info))
    keys: list[dict[str, Any]] = []
    for name in sorted(metadata.state_dict_metadata):
        meta = metadata.state_dict_metadata[name]
        size = getattr(meta, "size", None)
        properties = getattr(meta, "properties", None)
        if size is not None and properties is not None:
            numel = 1
            for dim in size:
                numel *= dim
            keys.append(
                {
                    "key": name,
                    "kind": "tensor",
                    "dtype": str(properties.dtype).removeprefix("torch."),
                    "shape": list(size),
                    "size_bytes": numel * properties.dtype.itemsize,
                }
            )
        else:
            keys.append({"key": name, "kind": "object", "dtype": None, "shape": None, "size_bytes": None})
    if args.json:
        print(
            json.dumps(
                dict(
                    _info_json(catalogued),
                    items=len(metadata.state_dict_metadata),
                    pieces=len(storage),
                    data_bytes=sum(info.length for info in storage.values()),
                    data_objects=len(objects),
                    ranks=sorted(ranks),
                    digests=digests,
                    keys=keys,
                ),
                indent=2,
            )
        )
    else:
        print(f"checkpoint   {where}")
        print(f"items        {len(metadata.state_dict_metadata)} ({len(storage)} stored pieces)")
        print(f"size         {human_bytes(sum(info.length for info in storage.values()))} in {len(objects)} objects")
        print(f"written by   {len(ranks) or '?'} rank(s)" + (f", ranks {min(ranks)}-{max(ranks)}" if ranks else ""))
        print(
            "digests      "
            + (
                f"xxh3-64 on {digests} of {len(storage)} pieces (written by s3dcp)"
                if digests
                else "none (written by another DCP writer; verify cannot check it)"
            )
        )
        if catalogued.stray_objects:
            print(
                f"strays       {catalogued.stray_objects} objects, {human_bytes(catalogued.stray_bytes)}, "
                "not referenced by .metadata (left by an earlier save; not counted above)"
            )
        if catalogued.damaged:
            print(f"damaged      {catalogued.damaged}")
        print()
        rows = [("KEY", "KIND", "DTYPE", "SHAPE", "SIZE")]
        for key in keys:
            if key["kind"] == "tensor":
                rows.append(
                    (
                        key["key"],
                        "tensor",
                        key["dtype"],
                        "x".join(map(str, key["shape"])) or "scalar",
                        human_bytes(key["size_bytes"]),
                    )
                )
            else:
                rows.append((key["key"], "object", "-", "-", "-"))
        _table(rows)
    if catalogued.damaged:
        print(f"s3dcp: damaged: {catalogued.uri}: {catalogued.damaged}", file=sys.stderr)
        return EXIT_DAMAGED
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from s3dcp._verify import verify_checkpoint  # here, not at the top: it brings torch

    progress = Progress("verified", None, None, sys.stderr)
    report = verify_checkpoint(
        args.uri,
        on_object=progress.object_done,
        on_bytes=progress.add_bytes,
        on_totals=progress.set_totals,
        **_s3(args),
    )
    progress.done()
    if getattr(args, "json", False):
        document = {
            "uri": report.uri,
            "items": report.items,
            "checked": report.checked,
            "unchecked": report.unchecked,
            "bytes_read": report.bytes_read,
            "problems": [{"key": p.key, "item": p.item, "detail": p.detail} for p in report.problems],
            "ok": report.ok,
        }
        print(json.dumps(document, indent=2))
        return EXIT_DAMAGED if report.problems else 0
    for problem in report.problems:
        print(f"s3dcp: damaged: {problem}", file=sys.stderr)
    summary = (
        f"{report.uri}: {report.checked} of {report.items} items match their digests, "
        f"{human_bytes(report.bytes_read)} read"
    )
    if report.unchecked:
        summary += f"; {report.unchecked} items have no digest to check"
    if report.problems:
        print(f"{summary}; {len(report.problems)} problem(s)", file=sys.stderr)
        return EXIT_DAMAGED
    print(f"{summary}: OK")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from s3dcp._copy import plan_copy, run_copy  # here, not at the top: it brings torch, which takes seconds to load

    plan = plan_copy(
        args.source, args.destination, overwrite=args.overwrite, overwrite_advice="add --overwrite", **_s3(args)
    )
    if args.dry_run:
        for line in plan.describe():
            print(line)
        return 0
    if (plan.replaces_commit or plan.replaces_save or plan.destination_strays) and not _confirm(
        args, f"replace the checkpoint at {args.destination}?", plan.describe()
    ):
        return _declined()
    progress = Progress("copied", len(plan.objects) + 1, plan.total_bytes, sys.stderr)
    report = run_copy(plan, on_object=progress.object_done, on_bytes=progress.add_bytes)
    progress.done()
    print(f"copied {args.source} -> {args.destination}: {report.objects} objects, {human_bytes(report.bytes_copied)}")
    if report.strays_left:
        print(
            f"left behind {report.strays_left} stray object(s), {human_bytes(report.stray_bytes_left)}, "
            f"under {args.source}: shard objects its .metadata does not reference (leftovers of earlier saves)"
        )
    if report.strays_removed:
        print(
            f"removed {report.strays_removed} stray object(s), {human_bytes(report.stray_bytes_removed)}, "
            f"from {args.destination}: shard objects of the replaced checkpoint the new one does not reference"
        )
    return 0


def _confirm(args: argparse.Namespace, question: str, details: Sequence[str]) -> bool:
    """Ask on a terminal before deleting, showing ``details`` first; scripts and ``--yes`` are not asked."""
    stdin = sys.stdin
    if args.yes or stdin is None or not stdin.isatty():
        return True
    for line in details:
        print(f"  {line}", file=sys.stderr)
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def _declined() -> int:
    print("s3dcp: not confirmed; nothing was deleted", file=sys.stderr)
    return EXIT_FAILED


def _described(removal: Removal) -> str:
    info = removal.checkpoint
    state = "damaged" if info.damaged else "complete" if info.complete else "incomplete"
    return f"{info.uri} ({state}, {len(removal.objects)} objects, {human_bytes(removal.size_bytes)})"


def _summary(plan: list[Removal], uri: str) -> str:
    objects = sum(len(removal.objects) for removal in plan)
    size = sum(removal.size_bytes for removal in plan)
    return f"{objects} objects ({human_bytes(size)}) of {len(plan)} checkpoint(s) under {uri}"


def _show_ask_act(
    args: argparse.Namespace,
    lines: list[str],
    summary: str,
    question: str,
    act: Callable[[], object],
    *,
    would: str,
    did: str,
) -> int:
    """The shared end of rm, prune and gc: show, ask, act (a dry run, or nothing to do, only shows)."""
    if args.dry_run or not lines:
        for line in lines:
            print(f"{would} {line}")
        print(f"{would if args.dry_run else did} {summary}")
        return 0
    if not _confirm(args, question, lines):
        return _declined()
    act()
    for line in lines:
        print(f"{did} {line}")
    print(f"{did} {summary}")
    return 0


def _delete_plan(args: argparse.Namespace, plan: list[Removal]) -> int:
    summary = _summary(plan, args.uri)
    return _show_ask_act(
        args,
        [_described(removal) for removal in plan],
        summary,
        f"delete {summary}?",
        lambda: remove(plan, **_s3(args)),
        would="would delete",
        did="deleted",
    )


def cmd_rm(args: argparse.Namespace) -> int:
    plan = plan_delete(args.uri, recursive=args.recursive, **_s3(args))
    if args.dry_run:
        for removal in plan:
            for obj in removal.objects:
                print(f"would delete s3://{removal.bucket}/{obj.key} ({human_bytes(obj.size)})")
    return _delete_plan(args, plan)


def cmd_prune(args: argparse.Namespace) -> int:
    plan = plan_prune(
        args.uri,
        args.keep,
        grace=timedelta(hours=args.grace_hours),
        include_unnumbered=args.include_unnumbered,
        **_s3(args),
    )
    return _delete_plan(args, plan)


def cmd_gc(args: argparse.Namespace) -> int:
    sweep = plan_gc(args.uri, timedelta(hours=args.older_than_hours), **_s3(args))
    lines = [
        f"upload of s3://{sweep.bucket}/{upload.key} started {upload.initiated:%Y-%m-%d %H:%M:%S} UTC"
        for upload in sweep.stale
    ]
    left = []
    if sweep.young:
        left.append(f"{sweep.young} checkpoint upload(s) younger than {args.older_than_hours:g} h")
    if sweep.not_checkpoints:
        left.append(f"{sweep.not_checkpoints} upload(s) of objects that are not checkpoint objects")
    note = f"; left alone: {', '.join(left)}" if left else ""
    return _show_ask_act(
        args,
        lines,
        f"{len(sweep.stale)} abandoned multipart upload(s) under {args.uri}{note}",
        f"abort {len(sweep.stale)} multipart upload(s) under {args.uri}?",
        lambda: abort_uploads(sweep, **_s3(args)),
        would="would abort",
        did="aborted",
    )


def _s3_uri(text: str) -> str:
    try:
        parse_s3_uri(text)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _non_negative_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"hours must be a finite number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 1 (the newest complete checkpoint always stays), got {text}"
        )
    return value


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The S3 and logging options, accepted before the command and after it."""

    def given(value: Any) -> Any:
        return argparse.SUPPRESS if default is argparse.SUPPRESS else value

    parser.add_argument("--region", default=given(None), help="AWS region (default: AWS_REGION / the profile's)")
    parser.add_argument(
        "--endpoint-url",
        default=given(None),
        help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL)",
    )
    parser.add_argument(
        "--profile", default=given(None), help="AWS profile for credentials (default: the standard chain)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=given(False), help="log each S3 phase to stderr"
    )


def _deletion_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--dry-run", action="store_true", help=f"only list what would be {what}, with sizes")
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do not ask before deleting (the question is asked only when stdin is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)  # after the command, overriding those given before it

    parser = argparse.ArgumentParser(
        prog="s3dcp",
        description="Manage PyTorch Distributed Checkpoints stored in S3.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s3dcp {__version__}")
    _global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str, details: str = "") -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text + details,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    ls = command(
        "ls",
        cmd_ls,
        "list the checkpoints directly under a prefix: step, complete, size, strays, time",
        "\n\nSIZE and OBJECTS count .metadata and what it references; STRAYS are own objects it does not "
        "reference\n(left by an earlier save to the same path).",
    )
    ls.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix holding checkpoints (e.g. step_N)")
    ls.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    info = command(
        "info", cmd_info, "summarize a checkpoint's metadata: keys, dtypes, shapes, sizes, ranks, strays, damage"
    )
    info.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix of one checkpoint")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    verify = command("verify", cmd_verify, "read back every item and check its digest (exit 3 on damage)")
    verify.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix of one checkpoint")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    cp = command("cp", cmd_cp, "copy a checkpoint: local directory <-> S3, or S3 -> S3 (.metadata last)")
    cp.add_argument("source", help="s3://bucket/prefix or a local DCP checkpoint directory")
    cp.add_argument("destination", help="s3://bucket/prefix or a local directory")
    cp.add_argument("--overwrite", action="store_true", help="replace a complete checkpoint at the destination")
    _deletion_options(cp, "copied, replaced and removed")
    rm = command(
        "rm",
        cmd_rm,
        "delete one checkpoint: its own objects only, .metadata first",
        "\n\nDeletes the checkpoint's .metadata, the objects it references, stray shards of earlier saves\n"
        "to the same path and s3dcp's .s3dcp-* markers. Refuses, deleting nothing, a prefix that is not\n"
        "a checkpoint or lies inside one, or a checkpoint that also holds other objects or nested\n"
        "checkpoints.\n"
        "With --recursive it deletes every checkpoint at or below the prefix that way; objects that\n"
        "belong to no checkpoint (logs, configs, data) are never deleted.",
    )
    rm.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix of the checkpoint")
    rm.add_argument(
        "--recursive",
        action="store_true",
        help="also delete checkpoints nested below the prefix (other objects still stay)",
    )
    _deletion_options(rm, "deleted")
    pr = command(
        "prune",
        cmd_prune,
        "delete all but the newest N complete step_N checkpoints under a prefix",
        "\n\nConsiders the checkpoints directly under the prefix whose name is step_N. Deletes, as rm does\n"
        "(own objects only, .metadata first), the complete ones older than the newest --keep by step\n"
        "(the newest always stays), and incomplete ones when no process could still be writing them:\n"
        "their objects, save marker and open multipart uploads are all older than --grace-hours.\n"
        "Unnumbered checkpoints (best, final) are never touched without --include-unnumbered.\n"
        "Refuses a prefix that holds runs rather than checkpoints.",
    )
    pr.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix holding step_N checkpoints")
    pr.add_argument("--keep", type=_positive_int, required=True, help="complete checkpoints to keep (>= 1)")
    pr.add_argument(
        "--grace-hours",
        type=_non_negative_hours,
        default=6.0,
        help="leave incomplete checkpoints written to more recently than this (a save may be running); default 6",
    )
    pr.add_argument(
        "--include-unnumbered",
        action="store_true",
        help="also prune checkpoints without step_N in their name; complete ones then rank by "
        "the time they were committed",
    )
    _deletion_options(pr, "deleted")
    g = command(
        "gc",
        cmd_gc,
        "abort multipart uploads left behind by killed saves (deletes no stored object)",
        "\n\nAborts multipart uploads under the prefix whose key is a checkpoint object (a DCP shard,\n"
        ".metadata or .s3dcp-*) and that started more than --older-than-hours ago. Uploads of other\n"
        "objects, and younger ones, are left alone and counted.",
    )
    g.add_argument("uri", type=_s3_uri, help="s3://bucket/prefix to clean under")
    g.add_argument(
        "--older-than-hours",
        type=_non_negative_hours,
        default=6.0,
        help="only uploads started longer ago than this (default 6)",
    )
    _deletion_options(g, "aborted")
    return parser


def _pipe_closed() -> int:
    """The reader of our output went away (``s3dcp ls ... | head``): stop quietly, as a command killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        os.close(devnull)
    except (OSError, ValueError):
        pass  # stdout is not a real file (captured in a test): nothing left to flush into it
    return EXIT_PIPE_CLOSED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("s3dcp").setLevel(logging.INFO)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _pipe_closed()
    except (S3DCPError, ValueError, OSError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"s3dcp: error: {message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("s3dcp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
