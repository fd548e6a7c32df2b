"""Child process for the memory test: save N MiB, print peak-RSS growth as JSON.

Peak RSS (ru_maxrss) is read before and after the save; the state dict is
allocated and touched first, so the growth is what the save itself added.
"""

from __future__ import annotations

import json
import resource
import sys
import warnings

import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageWriter

warnings.filterwarnings("ignore")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    path, mib = sys.argv[1], int(sys.argv[2])
    config = S3ClientConfig(part_size=8 * 1024 * 1024, max_concurrency=4)
    tensors = 8
    state = {f"t{i}": torch.randn(mib * 1024 * 1024 // 4 // tensors) for i in range(tensors)}
    dcp.save({"warm": torch.ones(1)}, storage_writer=S3StorageWriter(None, path + "-warm", config))
    before = peak_mib()
    dcp.save(state, storage_writer=S3StorageWriter(None, path, config))
    print(json.dumps({"state_mib": mib, "save_growth_mib": round(peak_mib() - before, 1)}))


if __name__ == "__main__":
    main()
