"""Child process for the memory tests: save and load N MiB, print peak-RSS growth as JSON.

The peak-RSS mark is reset (Linux ``/proc/self/clear_refs``) right before
each operation and read right after it; tensors are allocated and touched
first, so the growth is what the save or load itself added.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable

import torch
import torch.distributed.checkpoint as dcp

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter

warnings.filterwarnings("ignore")


def _status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def growth_of(operation: Callable[[], None]) -> float:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # peak RSS := current RSS
    base = _status("VmRSS")
    operation()
    return round(_status("VmHWM") - base, 1)


def main() -> None:
    path, mib = sys.argv[1], int(sys.argv[2])
    config = S3ClientConfig(part_size=8 * 1024 * 1024, max_concurrency=4, max_read_size=8 * 1024 * 1024)
    tensors = 8
    state = {f"t{i}": torch.randn(mib * 1024 * 1024 // 4 // tensors) for i in range(tensors)}
    dcp.save({"warm": torch.ones(1)}, storage_writer=S3StorageWriter(None, path + "-warm", config))
    save_growth = growth_of(lambda: dcp.save(state, storage_writer=S3StorageWriter(None, path, config)))
    for tensor in state.values():
        tensor.zero_()
    load_growth = growth_of(lambda: dcp.load(state, storage_reader=S3StorageReader(None, path, config)))
    # float64 destinations cannot take the stored bytes in place: read into buffers and converted
    wider = {name: torch.zeros(tensor.shape, dtype=torch.float64) for name, tensor in state.items()}
    buffered_growth = growth_of(lambda: dcp.load(wider, storage_reader=S3StorageReader(None, path, config)))
    report = {
        "state_mib": mib,
        "largest_item_mib": mib / tensors,
        "save_growth_mib": save_growth,
        "load_growth_mib": load_growth,
        "buffered_load_growth_mib": buffered_growth,
        "nonzero_after_load": all(bool(t.count_nonzero()) for t in [*state.values(), *wider.values()]),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
