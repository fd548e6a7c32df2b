"""Which ``BYTE_IO`` items pass as plain data: ``io.BytesIO`` values, and what hides in them."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

import pytest
import torch

from s3dcp import UnsafeCheckpointError
from s3dcp._format.plain_data import check_plain_data


def saved(value: Any) -> bytes:
    """A value as DCP's planner stores it: one ``torch.save`` archive."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("exit 0",))


@pytest.mark.parametrize(
    "value",
    [
        io.BytesIO(b"raw \x00\xff bytes"),
        io.BytesIO(b""),
        {"blob": io.BytesIO(b"abc"), "step": 3, "nested": [io.BytesIO(b"x"), torch.ones(2)]},
        io.BytesIO(saved({"lr": 0.1, "w": torch.arange(3)})),  # an archive of plain data inside
        io.BytesIO(pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True)})),  # a plain pickle inside
        io.BytesIO(pickle.dumps({"s": {1, 2}, "o": __import__("collections").OrderedDict(a=1)}, protocol=2)),
        io.BytesIO(b"PK\x03\x04 not really a zip"),
        io.BytesIO(b"c is for text, and it ends with a dot."),
        b"",  # protocol 2 pickles an empty bytes as a call to bytes
    ],
)
def test_bytes_io_values_are_plain_data(value: Any) -> None:
    check_plain_data(memoryview(saved(value)), "item")


def test_a_user_who_already_admits_bytes_io_keeps_it_admitted() -> None:
    with torch.serialization.safe_globals([io.BytesIO]):
        check_plain_data(memoryview(saved(io.BytesIO(b"abc"))), "item")
        assert io.BytesIO in torch.serialization.get_safe_globals()
    check_plain_data(memoryview(saved(io.BytesIO(b"abc"))), "item")
    assert io.BytesIO not in torch.serialization.get_safe_globals()


@pytest.mark.parametrize(
    ("value", "named"),
    [
        # a BytesIO wrapping a hostile pickle, raw or as a torch.save archive, at any depth
        (io.BytesIO(pickle.dumps(_Payload())), "system"),
        (io.BytesIO(pickle.dumps(_Payload(), protocol=0)), "system"),
        (io.BytesIO(pickle.dumps([_Payload()]) + b"trailing bytes pickle ignores"), "system"),
        ({"ok": io.BytesIO(b"abc"), "bad": io.BytesIO(saved(_Payload()))}, "system"),
        (io.BytesIO(saved(io.BytesIO(pickle.dumps(_Payload())))), "system"),
        (io.BytesIO(pickle.dumps(torch.nn.Linear(1, 1))), "Linear"),
        # naming BytesIO does not admit anything else the pickle names
        ([io.BytesIO(b"abc"), _Payload()], "system"),
    ],
)
def test_hostile_payloads_are_refused(value: Any, named: str) -> None:
    with pytest.raises(UnsafeCheckpointError, match=named):
        check_plain_data(memoryview(saved(value)), "item")


def test_a_hostile_pickle_that_names_bytes_io_in_its_state_is_refused() -> None:
    # what torch.save writes for BytesIO, with the state's dict holding a call to os.system
    class Hostile(io.BytesIO):
        def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
            return (io.BytesIO, (), (b"abc", 0, {"x": _Payload()}))

    with pytest.raises(UnsafeCheckpointError, match="system"):
        check_plain_data(memoryview(saved(Hostile())), "item")


def test_a_global_the_pickle_computes_is_refused() -> None:
    # STACK_GLOBAL whose module and name come from the memo cannot be read without running it
    computed = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93\x8c\x06exit 0\x85R."
    with pytest.raises(UnsafeCheckpointError, match="computes"):
        check_plain_data(memoryview(saved(io.BytesIO(computed))), "item")
