"""The client cache: one client per process and settings, never more than its bound."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from s3dcp._config import ClientSettings, S3ClientConfig, resolve_settings
from s3dcp._s3 import client as client_module
from s3dcp._s3.client import ClientCache


def settings(number: int) -> ClientSettings:
    return resolve_settings("us-east-1", S3ClientConfig(endpoint_url=f"http://store-{number}:9000"), {})


class Made:
    """A stand-in for botocore clients: counts what it was asked to create."""

    def __init__(self) -> None:
        self.created: list[ClientSettings] = []

    def __call__(self, settings: ClientSettings) -> Any:
        self.created.append(settings)
        return object()


def test_one_client_per_settings() -> None:
    made = Made()
    cache = ClientCache(made)
    first = cache.get(settings(1))
    assert cache.get(settings(1)) is first  # equal settings, not the same object
    assert cache.get(settings(2)) is not first
    assert made.created == [settings(1), settings(2)]


def test_it_cannot_grow_past_its_bound_and_drops_the_least_recently_used() -> None:
    made = Made()
    cache = ClientCache(made, max_size=3)
    kept = cache.get(settings(0))
    for number in range(1, 50):
        cache.get(settings(0))  # in use all along: never the one dropped
        cache.get(settings(number))
        assert len(cache) <= 3
    assert len(cache) == 3
    assert cache.get(settings(0)) is kept
    created = len(made.created)
    cache.get(settings(1))  # dropped long ago: made again
    assert len(made.created) == created + 1


def test_the_process_cache_is_bounded() -> None:
    assert 1 <= client_module._CACHE._max_size <= 64


def test_threads_racing_for_one_settings_get_one_client() -> None:
    made = Made()
    cache = ClientCache(made)
    start = threading.Barrier(8)
    got: list[Any] = []

    def get() -> None:
        start.wait()
        got.append(cache.get(settings(1)))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made.created) == 1 and all(client is got[0] for client in got)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_its_own_clients() -> None:
    made = Made()
    cache = ClientCache(made)
    parents = cache.get(settings(1))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            fresh = len(cache) == 0 and cache.get(settings(1)) is not parents
            again = cache.get(settings(1)) is cache.get(settings(1))
            os.write(write, b"ok" if fresh and again else b"no")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 2)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert cache.get(settings(1)) is parents  # the parent's are untouched


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ClientCache(Made(), max_size=0)
