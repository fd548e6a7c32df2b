"""The s3dcp command behaves as a shell user expects: fast start, options anywhere, pipes, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from s3dcp._cli import build_parser, main
from tests.conftest import list_keys

pytestmark = pytest.mark.s3

_TORCH_FREE = """
import json, sys
from s3dcp._cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
try:
    main(["--help"])
except SystemExit as done:
    codes.append(done.code)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def test_listing_and_cleanup_commands_never_import_torch(s3_env: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="run/step_1/__0_0.distcp", Body=b"an unfinished save")
    s3.put_object(Bucket=bucket, Key="run/step_2/.metadata", Body=b"not a pickle")  # damaged: read without torch
    uri = f"s3://{bucket}/run"
    commands = [
        ["ls", uri],
        ["ls", "--json", uri],
        ["rm", "--dry-run", f"{uri}/step_1"],
        ["prune", "--dry-run", uri, "--keep", "1"],
        ["gc", "--dry-run", uri],
    ]
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 0, 0, 0], "torch": False}, result.stderr
    assert "DAMAGED" in result.stdout


def test_a_closed_output_pipe_ends_quietly(s3_env: Any, s3: Any, bucket: str) -> None:
    for step in range(3):
        s3.put_object(Bucket=bucket, Key=f"run/step_{step}/__0_0.distcp", Body=b"x")
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` once head has gone: nobody will ever read
    try:
        result = subprocess.run(
            [sys.executable, "-m", "s3dcp", "ls", f"s3://{bucket}/run"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_global_options_go_before_or_after_the_command(
    s3_env: pytest.MonkeyPatch, s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3_env.delenv("AWS_ENDPOINT_URL")
    s3.put_object(Bucket=bucket, Key="run/step_7/__0_0.distcp", Body=b"x")
    uri = f"s3://{bucket}/run"
    for argv in (
        ["--endpoint-url", endpoint, "ls", uri],
        ["ls", uri, "--endpoint-url", endpoint],
        ["--endpoint-url", "http://127.0.0.1:9", "ls", "--endpoint-url", endpoint, uri],
    ):
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["7", "NO"]
    args = build_parser().parse_args(["--region", "eu-west-1", "--profile", "p", "gc", uri])
    assert (args.region, args.profile, args.verbose) == ("eu-west-1", "p", False)
    assert build_parser().parse_args(["-v", "ls", uri]).verbose and build_parser().parse_args(["ls", uri, "-v"]).verbose
    assert build_parser().parse_args(["verify", "--json", f"{uri}/step_7"]).json is True


@pytest.mark.parametrize(
    "argv",
    [
        ["rm"],
        ["rm", "not-a-uri"],
        ["gc", "s3://{bucket}/run", "--older-than-hours", "inf"],
        ["prune", "s3://{bucket}/run", "--keep", "0"],
        ["prune", "s3://{bucket}/run", "--keep", "1", "--grace-hours", "nan"],
        ["ls"],
        [],
    ],
)
def test_usage_errors_exit_2_and_touch_nothing(
    s3_env: Any, s3: Any, bucket: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_object(Bucket=bucket, Key="run/step_1/__0_0.distcp", Body=b"x")
    with pytest.raises(SystemExit) as done:
        main([arg.format(bucket=bucket) for arg in argv])
    assert done.value.code == 2 and "usage: s3dcp" in capsys.readouterr().err
    assert list(list_keys(s3, bucket)) == ["run/step_1/__0_0.distcp"]


def test_help_says_what_each_destructive_command_deletes(capsys: pytest.CaptureFixture[str]) -> None:
    texts = {}
    for argv in (["--help"], ["rm", "--help"], ["prune", "--help"], ["gc", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        texts[argv[0]] = " ".join(capsys.readouterr().out.split())
    assert "never deleted" in texts["rm"] and "--recursive" in texts["rm"] and ".metadata" in texts["rm"]
    assert "step_N" in texts["prune"] and "--include-unnumbered" in texts["prune"] and "as rm does" in texts["prune"]
    assert "deletes no stored object" in texts["gc"] and "left alone" in texts["gc"]
    for command in ("rm URI", "prune URI", "gc URI"):
        assert command in texts["--help"]
