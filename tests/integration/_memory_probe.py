"""Child process for the memory test: save and load N MiB at s3dcp's defaults, print peak-RSS growth as JSON.

The save goes to ``AWS_ENDPOINT_URL`` (a slow link, so parts pile up to the
limit); the loads read from the endpoint given as the third argument. The
peak-RSS mark is reset (Linux ``/proc/self/clear_refs``) right before each
operation and read right after it; tensors are allocated and touched first,
so the growth is what the save or load itself added.
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

TENSOR_MIB = 4  # below the default part size: each tensor is copied into part buffers


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
    path, mib, load_endpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    elements = TENSOR_MIB * 1024 * 1024 // 4
    state = {f"t{i}": torch.full((elements,), float(i + 1)) for i in range(mib // TENSOR_MIB)}
    dcp.save({"warm": torch.ones(1)}, storage_writer=S3StorageWriter(None, path + "-warm"))
    save_growth = growth_of(lambda: dcp.save(state, storage_writer=S3StorageWriter(None, path)))
    for tensor in state.values():
        tensor.zero_()
    direct = S3ClientConfig(endpoint_url=load_endpoint)
    load_growth = growth_of(lambda: dcp.load(state, storage_reader=S3StorageReader(None, path, direct)))
    # float64 destinations cannot take the stored bytes in place: read into buffers and converted
    wider = {name: torch.zeros(tensor.shape, dtype=torch.float64) for name, tensor in state.items()}
    buffered_growth = growth_of(lambda: dcp.load(wider, storage_reader=S3StorageReader(None, path, direct)))
    report = {
        "state_mib": mib,
        "largest_item_mib": TENSOR_MIB,
        "save_growth_mib": save_growth,
        "load_growth_mib": load_growth,
        "buffered_load_growth_mib": buffered_growth,
        "loaded_right": all(
            bool((t == i + 1).all()) and bool((w == i + 1).all())
            for i, (t, w) in enumerate(zip(state.values(), wider.values(), strict=True))
        ),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
