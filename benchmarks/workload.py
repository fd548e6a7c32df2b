"""The benchmark state dicts: ``mixed``, a mix of sizes like a real model + optimizer
checkpoint, and ``one-tensor``, a single float32 tensor.

Built deterministically from a seed, so every worker process makes the same
bytes without shipping them around.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MIB = 1024 * 1024


def build_state_dict(total_mib: int = 1024, seed: int = 0) -> dict[str, Any]:
    """About ``total_mib`` MiB: ~55% in a few big tensors of mixed dtypes,
    ~40% in 4 MiB tensors, the rest in hundreds of small ones, plus a few
    non-tensor values."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    big_budget = int(total_mib * 0.55)
    big_sizes = [256, 128, 64]
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    i = 0
    while big_budget >= 32:
        size = next((s for s in big_sizes if s <= big_budget), 32)
        dtype = dtypes[i % len(dtypes)]
        numel = size * MIB // torch.empty((), dtype=dtype).element_size()
        state[f"model.big{i}"] = torch.randn(numel, generator=g, dtype=dtype)
        big_budget -= size
        i += 1
    for j in range(int(total_mib * 0.40) // 4):
        state[f"optim.m{j}"] = torch.randn(MIB, generator=g)  # 4 MiB of float32
    small_budget = total_mib * MIB - sum(t.numel() * t.element_size() for t in state.values())
    k = 0
    while small_budget > 64 * 1024:
        state[f"model.small{k}"] = torch.randn(8192 + 128 * (k % 64), generator=g)
        small_budget -= state[f"model.small{k}"].numel() * 4
        k += 1
    state["meta"] = {"step": 1000, "lr": 3e-4, "name": "bench", "betas": [0.9, 0.95]}
    return state


def build_one_tensor(total_mib: int = 1024, seed: int = 0) -> dict[str, Any]:
    """One float32 tensor of ``total_mib`` MiB and nothing else (``model.weight``)."""
    g = torch.Generator().manual_seed(seed)
    return {"model.weight": torch.randn(total_mib * MIB // 4, generator=g)}


WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {"mixed": build_state_dict, "one-tensor": build_one_tensor}


def build(workload: str, total_mib: int, seed: int = 0) -> dict[str, Any]:
    """The state dict of ``workload`` (a key of :data:`WORKLOADS`)."""
    return WORKLOADS[workload](total_mib, seed=seed)


def tensor_bytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    return 0


def blank_copy(state: Any) -> Any:
    """Same structure with zeroed tensors: the destination of a load."""
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {k: blank_copy(v) for k, v in state.items()}
    return state


def tensors_in_order(state: dict[str, Any]) -> list[torch.Tensor]:
    return [v for v in state.values() if isinstance(v, torch.Tensor)]
