"""Checksums: digested as written, compared as read."""

from __future__ import annotations

import io

import pytest
import xxhash

from s3dcp import ChecksumMismatchError
from s3dcp._compat.torch import storage_info_class
from s3dcp._format.integrity import DigestingWriter, digest, get_checksum, set_checksum, verify

StorageInfo = storage_info_class()


def test_digesting_writer_digests_each_item_and_passes_bytes_on() -> None:
    sink = io.BytesIO()
    writer = DigestingWriter(sink)
    writer.begin()
    writer.write(b"hello ")
    writer.write(memoryview(b"world"))
    first = writer.end()
    writer.begin()
    writer.write(bytearray(b"second"))
    second = writer.end()
    assert sink.getvalue() == b"hello worldsecond"
    assert writer.tell() == len(b"hello worldsecond")
    assert first == f"xxh3_64:{xxhash.xxh3_64_hexdigest(b'hello world')}" == digest(b"hello world")
    assert second == digest(b"second")


def test_digesting_writer_is_a_crc_writer_over_any_stream() -> None:
    import zlib

    from s3dcp._crc32 import CrcWriter
    from s3dcp._s3.upload import ObjectUpload

    assert issubclass(ObjectUpload, CrcWriter) and issubclass(DigestingWriter, CrcWriter)
    assert not issubclass(io.BytesIO, CrcWriter)  # a plain file: the caller computes the CRC-32

    class CopyingSink(io.BytesIO):
        def write_with_crc(self, data: object, also: object = None, unchanging: bool = False) -> int:
            self.write(data)  # type: ignore[arg-type]
            also(memoryview(data))  # type: ignore[arg-type, operator]  # one piece: all of it
            return zlib.crc32(data)  # type: ignore[arg-type]

    for sink in (io.BytesIO(), CopyingSink()):
        writer = DigestingWriter(sink)
        seen: list[bytes] = []
        writer.begin()
        writer.write(b"head ")
        crc = writer.write_with_crc(
            memoryview(b"tensor bytes"), also=lambda piece, seen=seen: seen.append(bytes(piece))
        )
        assert crc == zlib.crc32(b"tensor bytes")
        assert seen == [b"tensor bytes"]
        assert writer.end() == digest(b"head tensor bytes")
        assert sink.getvalue() == b"head tensor bytes"


def test_checksum_travels_on_the_storage_record_through_pickle() -> None:
    import pickle

    info = StorageInfo("__0_0.distcp", 10, 5)
    assert get_checksum(info) is None
    set_checksum(info, digest(b"abcde"))
    again = pickle.loads(pickle.dumps(info))
    assert get_checksum(again) == digest(b"abcde")
    assert (again.relative_path, again.offset, again.length) == ("__0_0.distcp", 10, 5)


def test_verify_passes_good_bytes_and_records_without_checksums() -> None:
    info = StorageInfo("__0_0.distcp", 0, 3)
    verify(info, b"abc", bucket="b", key="k", item="w")  # nothing recorded: nothing to check
    set_checksum(info, digest(b"abc"))
    verify(info, memoryview(b"abc"), bucket="b", key="k", item="w")


def test_verify_names_key_item_and_range_on_mismatch() -> None:
    info = StorageInfo("__0_0.distcp", 100, 3)
    set_checksum(info, digest(b"abc"))
    with pytest.raises(ChecksumMismatchError) as raised:
        verify(info, b"abd", bucket="b", key="run/__0_0.distcp", item="model.w")
    error = raised.value
    assert (error.bucket, error.key, error.item) == ("b", "run/__0_0.distcp", "model.w")
    assert "s3://b/run/__0_0.distcp" in str(error) and "bytes 100-102" in str(error)


def test_unknown_checksum_kinds_are_not_silently_accepted() -> None:
    info = StorageInfo("__0_0.distcp", 0, 3)
    set_checksum(info, "sha999:00")
    with pytest.raises(ChecksumMismatchError, match="unknown kind"):
        verify(info, b"abc", bucket="b", key="k", item="w")
