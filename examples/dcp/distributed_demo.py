"""Run the distributed example twice: 4 ranks train and checkpoint, then 2 ranks resume.

    python examples/dcp/distributed_demo.py                  # a local S3 server (moto)
    python examples/dcp/distributed_demo.py --uri s3://bucket/prefix

Both runs are ``torchrun`` launches of ``train_distributed.py`` on the CPU
(gloo); the second resumes from the newest complete checkpoint the first
wrote, at half the world size.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from _s3_target import s3_target

HERE = Path(__file__).resolve().parent


def torchrun(ranks: int, uri: str, steps: int) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={ranks}",
        str(HERE / "train_distributed.py"),
        "--uri",
        uri,
        "--steps",
        str(steps),
        "--every",
        "5",
    ]
    print(
        f"\n$ torchrun --nproc-per-node={ranks} examples/dcp/train_distributed.py --uri {uri} --steps {steps}",
        flush=True,
    )
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="s3://bucket/prefix (default: a local S3 server)")
    args = parser.parse_args()
    with s3_target(args.uri) as uri:
        torchrun(4, uri, steps=12)
        torchrun(2, uri, steps=20)


if __name__ == "__main__":
    main()
