"""The socket body readers over kept-alive connections, HTTP and HTTPS, against a real loopback proxy.

moto closes every connection, so these reads go through the fault proxy,
which keeps connections alive (and answers HTTPS with ``tls=True``). A spy
on :func:`s3dcp._s3.body._socket_reader` counts the bytes its direct receive
really moved, so a fast path silently skipped fails the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

import s3dcp._s3.body
from s3dcp import S3ClientConfig, S3StorageReader, S3StorageWriter
from s3dcp._compat import _missing
from s3dcp._compat import ssl as compat_ssl
from s3dcp_testkit import target
from s3dcp_testkit.fault_proxy import FaultProxy
from tests.conftest import REGION
from tests.helpers import FAST_RETRIES, assert_same, blank_like

pytestmark = pytest.mark.s3

QUICK = S3ClientConfig(**FAST_RETRIES)


def small_state() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(5)
    return {"w": torch.randn(96 * 1024, generator=generator), "step": torch.arange(30_000)}


@pytest.fixture(params=["http", "https"])
def keepalive(
    request: pytest.FixtureRequest, s3_env: pytest.MonkeyPatch, s3_server: target.TestServer
) -> Iterator[FaultProxy]:
    """The proxy in front of the test server, plain or TLS, with the environment pointing at it."""
    with FaultProxy(s3_server.http_endpoint_url, tls=request.param == "https") as proxy:
        s3_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        if proxy.ca_bundle:
            s3_env.setenv("AWS_CA_BUNDLE", proxy.ca_bundle)
        else:
            s3_env.delenv("AWS_CA_BUNDLE", raising=False)
        yield proxy


class ReaderSpy:
    """Wraps ``_socket_reader``: which receive each body got, and the bytes it moved."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kinds: list[str] = []
        self.received = 0
        original = s3dcp._s3.body._socket_reader

        def spy(
            stream: Any, response: Any, buffered: Any, length: int, receive: Callable[[memoryview], int], where: str
        ) -> Any:
            self.kinds.append(getattr(receive, "__name__", ""))

            def counting(view: memoryview) -> int:
                count = receive(view)
                self.received += count
                return count

            return original(stream, response, buffered, length, counting, where)

        monkeypatch.setattr(s3dcp._s3.body, "_socket_reader", spy)


def save_then_spy(keepalive: FaultProxy, monkeypatch: pytest.MonkeyPatch, path: str) -> tuple[Any, ReaderSpy]:
    state = small_state()
    dcp.save(state, storage_writer=S3StorageWriter(REGION, path, QUICK))
    keepalive.clear()
    return state, ReaderSpy(monkeypatch)


def expected_receive(proxy: FaultProxy) -> str:
    return "receive_tls" if proxy.tls else "recv_into"


def test_a_load_reads_bodies_straight_from_the_kept_alive_socket(
    keepalive: FaultProxy, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    path = f"s3://{bucket}/fast"
    state, spy = save_then_spy(keepalive, monkeypatch, path)
    for _ in range(2):  # the second load finds the connections the first gave back
        loaded = blank_like(state)
        dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, QUICK))
        assert_same(state, loaded)
    gets = keepalive.requests("GET")
    assert spy.kinds and set(spy.kinds) == {expected_receive(keepalive)}
    assert spy.received > 256 * 1024  # most of the tensor bytes came through the direct receive
    assert keepalive.connections < len(gets)  # connections were given back and reused


def test_a_body_cut_short_is_fetched_again_and_loads_bit_exact(
    keepalive: FaultProxy, monkeypatch: pytest.MonkeyPatch, bucket: str
) -> None:
    path = f"s3://{bucket}/cut"
    state, spy = save_then_spy(keepalive, monkeypatch, path)
    keepalive.add_rule("truncate", method="GET", key_pattern=r"distcp$", count=1, keep_fraction=0.4)
    loaded = blank_like(state)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, QUICK))
    assert_same(state, loaded)
    first, *again = keepalive.requests("GET", r"distcp$")
    assert first.action == "truncate" and again and again[0].action is None
    assert set(spy.kinds) == {expected_receive(keepalive)} and spy.received > 0


class ChangedTLSObject:
    """An ``_sslobj`` whose ``read`` takes other arguments than s3dcp passes."""

    def read(self, count: int) -> bytes:
        raise AssertionError("never reached: called with two arguments")


@pytest.mark.parametrize("changed", [ChangedTLSObject(), object()], ids=["read-signature", "no-read"])
def test_a_changed_tls_object_falls_back_to_http_client_and_loads_bit_exact(
    s3_server: target.TestServer,
    s3_env: pytest.MonkeyPatch,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bucket: str,
    changed: object,
) -> None:
    monkeypatch.setattr(compat_ssl.SWITCH, "on", True)
    monkeypatch.setattr(_missing, "_reported", set())
    with FaultProxy(s3_server.http_endpoint_url, tls=True) as proxy:
        s3_env.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        s3_env.setenv("AWS_CA_BUNDLE", str(proxy.ca_bundle))
        path = f"s3://{bucket}/changed"
        state, spy = save_then_spy(proxy, monkeypatch, path)
        monkeypatch.setattr(compat_ssl, "_tls_object", lambda sock: changed)
        loaded = blank_like(state)
        with caplog.at_level(logging.DEBUG, logger="s3dcp"):
            dcp.load(loaded, storage_reader=S3StorageReader(REGION, path, QUICK))
        assert_same(state, loaded)
        assert spy.received == 0
        assert all(record.action is None for record in proxy.requests())
        ranges = [(r.path, r.range) for r in proxy.requests("GET")]
        assert len(ranges) == len(set(ranges))  # nothing was fetched twice: no retry was needed
    said = [r.getMessage() for r in caplog.records if "_sslobj.read" in r.getMessage()]
    assert len(said) == 1
    assert compat_ssl.SWITCH.on is not isinstance(changed, ChangedTLSObject)  # retired only after a failed call
