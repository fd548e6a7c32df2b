"""Quickstart: save a model and optimizer to S3 with DCP, load them back, verify.

python examples/dcp/quickstart.py                     # local S3 server
python examples/dcp/quickstart.py --uri s3://bucket/quickstart
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.distributed.checkpoint as dcp
from _s3_target import s3_target

from s3dcp import S3StorageReader, S3StorageWriter

warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", help="s3://bucket/prefix to save under (default: a local server)")
    args = parser.parse_args()

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()

    with s3_target(args.uri) as base:
        uri = f"{base}/quickstart/step_1"
        state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": 1}
        dcp.save(state, storage_writer=S3StorageWriter(None, uri, overwrite=True))
        print(f"saved to {uri}")

        fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        restored = {"model": fresh.state_dict(), "step": 0}
        dcp.load(restored, storage_reader=S3StorageReader(None, uri))
        fresh.load_state_dict(restored["model"])
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, fresh.state_dict()[name]), name
        print(f"loaded step {restored['step']}: every model tensor is identical")


if __name__ == "__main__":
    main()
