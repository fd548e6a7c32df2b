"""Which objects a ``.metadata`` references, read without torch and without running anything.

The management commands (``ls``, ``rm``, ``prune``, ``cp``) need to know
which objects under a prefix a committed checkpoint is made of, and they
should start in a fraction of a second, before torch could even be
imported. :func:`referenced_objects` reads the pickled DCP ``Metadata``
with an unpickler that builds an inert stand-in for every class the data
names: nothing the checkpoint brings is ever called, so it is as safe as
the loader's allow-list, and it does not need the classes to exist.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from s3dcp._errors import CheckpointDamagedError

__all__ = ["referenced_objects"]


class _Inert:
    """Stands in for any class the pickle names: takes its arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        # a dict, or (dict or None, slots dict) for classes with __slots__, or anything else
        parts = state if isinstance(state, tuple) else (state,)
        for part in parts:
            if isinstance(part, dict):
                self.__dict__.update({str(key): value for key, value in part.items()})
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict  # filled item by item: a plain dict takes the same calls
        return type(name, (_Inert,), {"__module__": f"inert:{module}"})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("holds a persistent reference, which DCP metadata never contains")


def referenced_objects(body: bytes, where: str) -> dict[str, int]:
    """Map each object path the metadata records to the bytes it must hold at least.

    Args:
        body: the bytes of a ``.metadata`` object.
        where: the ``.metadata``'s location, for messages.

    Raises:
        CheckpointDamagedError: the bytes are not a DCP ``Metadata`` pickle
            with per-item storage records.
    """
    try:
        metadata = _InertUnpickler(io.BytesIO(body)).load()
    except Exception as err:
        raise CheckpointDamagedError(
            f"{where} does not unpickle ({type(err).__name__}: {err}); the commit record is damaged"
        ) from err
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise CheckpointDamagedError(f"{where} is not DCP metadata with per-item storage records")
    needed: dict[str, int] = {}
    for info in storage.values():
        path, offset, length = (getattr(info, name, None) for name in ("relative_path", "offset", "length"))
        if not isinstance(path, str) or not isinstance(offset, int) or not isinstance(length, int):
            raise CheckpointDamagedError(f"{where} holds a storage record without a path and byte range")
        needed[path] = max(needed.get(path, 0), offset + length)
    return needed
