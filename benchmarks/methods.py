"""The ways of moving a checkpoint to and from S3 that the benchmarks compare.

Each method has ``prepare`` (run once, e.g. store a checkpoint for later
loads), ``save`` and ``load``; the DCP ones also give their ``writer`` and
``reader``. Methods read their settings from the environment
(``AWS_ENDPOINT_URL``, ``AWS_CA_BUNDLE`` and credentials), like a user's job
would. s3torchconnector and s3fs are imported only when used, so the test
venv (which has neither) still runs ``s3dcp`` and ``boto3-raw``.

Settings shared where a tool has them: 4 writer threads per rank for every
DCP writer, 16 MiB parts for s3dcp (its default), s3torchconnector and
boto3; otherwise each tool's defaults (s3dcp: 32 requests in flight;
boto3-raw: 8).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from bisect import bisect_right
from pathlib import Path
from typing import Any

import boto3
import torch
import torch.distributed.checkpoint as dcp
from boto3.s3.transfer import TransferConfig
from workload import tensors_in_order

from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter

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

    def cleanup(self, uri: str) -> None:
        """Called after a measured save; local methods drop what they wrote."""


class DCPMethod(Method):
    """A DCP storage writer/reader pair; ``thread_count`` parallel writers per rank."""

    thread_count = 4

    def writer(self, uri: str) -> Any:
        raise NotImplementedError

    def reader(self, uri: str) -> Any:
        raise NotImplementedError

    def save(self, state: dict[str, Any], uri: str) -> None:
        dcp.save(state, storage_writer=self.writer(uri))

    def load(self, dest: dict[str, Any], uri: str) -> None:
        dcp.load(dest, storage_reader=self.reader(uri))


class S3DCP(DCPMethod):
    name = "s3dcp"

    def _config(self) -> S3ClientConfig:
        return S3ClientConfig(part_size=PART_SIZE)

    def writer(self, uri: str) -> Any:
        return S3StorageWriter(None, uri, self._config(), thread_count=self.thread_count, overwrite=True)

    def reader(self, uri: str) -> Any:
        return S3StorageReader(None, uri, self._config())


class S3DCPUnsigned(S3DCP):
    """s3dcp with ``sign_payload=False``: no SigV4 SHA-256 of each body over plain HTTP, as
    s3torchconnector's client does (``UNSIGNED-PAYLOAD``); the same as ``s3dcp`` over HTTPS."""

    name = "s3dcp-unsigned"

    def _config(self) -> S3ClientConfig:
        return S3ClientConfig(part_size=PART_SIZE, sign_payload=False)


class S3TorchConnector(DCPMethod):
    """s3torchconnector's DCP writer/reader (AWS CRT client). Its client takes the
    endpoint from ``AWS_ENDPOINT_URL``; path-style addressing for local servers."""

    name = "s3torchconnector"

    def _config(self) -> Any:
        from s3torchconnector import S3ClientConfig as CRTConfig

        return CRTConfig(part_size=PART_SIZE, force_path_style=True)

    def writer(self, uri: str) -> Any:
        from s3torchconnector.dcp import S3StorageWriter as CRTWriter

        return CRTWriter(region(), uri, self._config(), thread_count=self.thread_count)

    def reader(self, uri: str) -> Any:
        from s3torchconnector.dcp import S3StorageReader as CRTReader

        return CRTReader(region(), uri, self._config())


class FsspecS3fs(DCPMethod):
    """torch's FsspecWriter/FsspecReader on s3fs (aiobotocore) with s3fs's defaults
    (50 MiB blocks). s3fs takes the endpoint (``AWS_ENDPOINT_URL``) and CA
    file (``AWS_CA_BUNDLE``) from the environment through botocore."""

    name = "fsspec-s3fs"

    def writer(self, uri: str) -> Any:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(uri, sync_files=False, thread_count=self.thread_count)

    def reader(self, uri: str) -> Any:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(uri)


class LocalFileSystem(DCPMethod):
    """DCP's own FileSystemWriter/FileSystemReader on a local directory: no network.

    The directory comes from ``S3DCP_BENCH_LOCAL_DIR`` (the driver makes a
    temporary one and removes it at the end); a save's directory is removed
    right after it is measured. No fsync (``sync_files=False``), like the S3
    writers, so saves end in the page cache."""

    name = "local-fs"

    def __init__(self, base_uri: str) -> None:
        root = Path(os.environ.get("S3DCP_BENCH_LOCAL_DIR") or tempfile.gettempdir())
        self.uri = str(root / "local-fs")

    def writer(self, uri: str) -> Any:
        return dcp.FileSystemWriter(uri, sync_files=False, thread_count=self.thread_count)

    def reader(self, uri: str) -> Any:
        return dcp.FileSystemReader(uri)

    def cleanup(self, uri: str) -> None:
        shutil.rmtree(uri, ignore_errors=True)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class _TensorBytes(io.RawIOBase):
    """All tensors of a state dict as one seekable byte stream (read and write)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self._views = [t.contiguous().view(torch.uint8).numpy().data.cast("B") for t in tensors_in_order(state)]
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
        return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=CONCURRENCY)

    def _target(self, uri: str) -> tuple[Any, str, str]:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return boto3.client("s3"), bucket, key + ".bin"

    def save(self, state: dict[str, Any], uri: str) -> None:
        client, bucket, key = self._target(uri)
        client.upload_fileobj(_TensorBytes(state), bucket, key, Config=self._transfer())

    def load(self, dest: dict[str, Any], uri: str) -> None:
        client, bucket, key = self._target(uri)
        client.download_fileobj(bucket, key, _TensorBytes(dest), Config=self._transfer())


METHODS: dict[str, type[Method]] = {
    m.name: m for m in (S3DCP, S3DCPUnsigned, S3TorchConnector, FsspecS3fs, Boto3Raw, LocalFileSystem)
}


def endpoint_description() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
