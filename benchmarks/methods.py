"""The ways of moving a checkpoint to and from S3 that the benchmarks compare.

Each method has ``prepare`` (run once, e.g. store a checkpoint for later
loads), ``save`` and ``load``. Methods read their settings from the
environment (``AWS_ENDPOINT_URL`` and credentials), like a user's job would.
"""

from __future__ import annotations

import io
import os
import warnings
from bisect import bisect_right
from typing import Any

import boto3
import torch
import torch.distributed.checkpoint as dcp
from boto3.s3.transfer import TransferConfig

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from workload import tensors_in_order

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

MIB = 1024 * 1024
PART_SIZE = 16 * MIB
CONCURRENCY = 8


class Method:
    name = ""

    def __init__(self, base_uri: str) -> None:
        self.uri = f"{base_uri}/{self.name}"

    def prepare(self, state: dict[str, Any]) -> None:
        self.save(state, self.uri + "-ref")

    def save(self, state: dict[str, Any], uri: str) -> None:
        raise NotImplementedError

    def load(self, dest: dict[str, Any], uri: str) -> None:
        raise NotImplementedError


class S3DCP(Method):
    name = "s3dcp"
    thread_count = 4

    def _config(self) -> S3ClientConfig:
        return S3ClientConfig(part_size=PART_SIZE, max_concurrency=CONCURRENCY)

    def save(self, state: dict[str, Any], uri: str) -> None:
        writer = S3StorageWriter(None, uri, self._config(), thread_count=self.thread_count, overwrite=True)
        dcp.save(state, storage_writer=writer)

    def load(self, dest: dict[str, Any], uri: str) -> None:
        dcp.load(dest, storage_reader=S3StorageReader(None, uri, self._config()))


class _TensorBytes(io.RawIOBase):
    """All tensors of a state dict as one seekable byte stream (read and write)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self._views = [memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B") for t in tensors_in_order(state)]
        self._starts = []
        position = 0
        for view in self._views:
            self._starts.append(position)
            position += len(view)
        self.size = position
        self._position = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._position = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence] + offset
        return self._position

    def _spans(self, length: int) -> Any:
        position, end = self._position, min(self._position + length, self.size)
        while position < end:
            index = bisect_right(self._starts, position) - 1
            view, start = self._views[index], self._starts[index]
            take = min(end - position, len(view) - (position - start))
            yield view[position - start : position - start + take]
            position += take

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        for span in self._spans(len(target)):
            target[filled : filled + len(span)] = span
            filled += len(span)
        self._position += filled
        return filled

    def write(self, data: Any) -> int:
        source = memoryview(data).cast("B")
        written = 0
        for span in self._spans(len(source)):
            span[:] = source[written : written + len(span)]
            written += len(span)
        self._position += written
        return written


class Boto3Raw(Method):
    """The reference: boto3's transfer manager moving the same tensor bytes as one object."""

    name = "boto3-raw"

    def _transfer(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=CONCURRENCY
        )

    def _target(self, uri: str) -> tuple[Any, str, str]:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return boto3.client("s3"), bucket, key + ".bin"

    def save(self, state: dict[str, Any], uri: str) -> None:
        client, bucket, key = self._target(uri)
        client.upload_fileobj(_TensorBytes(state), bucket, key, Config=self._transfer())

    def load(self, dest: dict[str, Any], uri: str) -> None:
        client, bucket, key = self._target(uri)
        client.download_fileobj(bucket, key, _TensorBytes(dest), Config=self._transfer())


METHODS: dict[str, type[Method]] = {m.name: m for m in (S3DCP, Boto3Raw)}


def endpoint_description() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
