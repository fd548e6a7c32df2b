"""Write a one-tensor ``torch.save`` archive straight from the tensor's memory.

``torch.save`` copies every byte of a tensor through its zip writer into
Python ``bytes`` objects, in many small writes, before s3dcp copies it again
into an upload part. For the tensors DCP writes (one dense CPU tensor per
archive) the archive is simple enough to emit directly: its
:class:`~s3dcp._format.framing.Framing` (every byte but the tensor's, laid out
once per dtype, shape and strides), with the tensor's bytes written as one
buffer in between, so shard objects stay identical to ``FileSystemWriter``'s
files. When the framing is unknown (another torch release, an unusual
tensor) :func:`write_tensor` returns ``False`` and the caller uses
``torch.save``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from s3dcp import _crc32 as crc32
from s3dcp._crc32 import CrcWriter
from s3dcp._format.framing import Framing, framing_of

__all__ = ["write_tensor"]

_SMALL = 64 * 1024  # tensors below this go to the stream in one write with their framing


class _Writer(Protocol):
    def write(self, data: Any, /) -> int: ...


def _write(stream: _Writer, tensor: torch.Tensor, framing: Framing, unchanging: bool = False) -> None:
    array: Any = tensor.reshape(-1).view(torch.uint8).numpy()
    data = memoryview(array).cast("B")  # the tensor's own bytes, not a copy
    if data.nbytes < _SMALL:  # one write: fewer calls through the stream's layers
        crc = crc32.compute(data)
        stream.write(b"".join((framing.head, data, framing.finish(crc))))
        return
    stream.write(framing.head)
    if isinstance(stream, CrcWriter):  # the stream's copy pass computes the CRC-32 too
        crc = int(stream.write_with_crc(data, unchanging=True) if unchanging else stream.write_with_crc(data))
    else:
        crc = crc32.compute(data)
        stream.write(data)
    stream.write(framing.finish(crc))


def _memory_as_stored(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s memory is, byte for byte, the storage record ``torch.save`` writes."""
    return (
        type(tensor) is torch.Tensor
        and tensor.device.type == "cpu"
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nbytes
    )


def write_tensor(stream: _Writer | CrcWriter, tensor: torch.Tensor, unchanging: bool = False) -> bool:
    """Write ``tensor`` to ``stream`` as ``torch.save`` would; ``False`` if not handled.

    On ``False`` nothing was written and the caller should use ``torch.save``.
    ``unchanging`` promises the tensor keeps its values until the stream is
    committed, so a :class:`~s3dcp._crc32.CrcWriter` may send its
    memory without copying it.
    """
    if not _memory_as_stored(tensor):
        return False
    framing = framing_of(tensor)
    if framing is None:
        return False
    _write(stream, tensor, framing, unchanging)
    return True
