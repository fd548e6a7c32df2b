"""The WAN emulator's arithmetic: token buckets, pacing, first-byte latencies and requests in flight (fake clock)."""

from __future__ import annotations

import io

import pytest

from s3dcp_testkit.null_sink import s3_operation
from s3dcp_testkit.wan import MIN_SLEEP, PIECE, InFlight, Pacer, TokenBucket, WanSettings, _PacedReader, _PacedSocket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_its_burst_through_then_asks_for_the_time_the_rest_takes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1000.0, burst=500.0, clock=clock)
    assert bucket.reserve(500) == 0.0  # the saved burst
    assert bucket.reserve(250) == pytest.approx(0.25)  # 250 bytes owed at 1000/s
    assert bucket.reserve(250) == pytest.approx(0.5)  # callers queue behind earlier reservations
    clock.now += 0.5
    assert bucket.reserve(0) == 0.0  # the debt is paid off
    clock.now += 10  # idle: refills, but only up to the burst
    assert bucket.reserve(500) == 0.0
    assert bucket.reserve(100) == pytest.approx(0.1)


def test_a_bucket_paces_a_long_transfer_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=90e6, burst=256 * 1024, clock=clock)
    start = clock.now
    for _ in range(100 * 1024 * 1024 // PIECE):
        clock.now += bucket.reserve(PIECE)  # a caller that sleeps what it is told
    assert (clock.now - start) == pytest.approx((100 * 1024 * 1024 - 256 * 1024) / 90e6)


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_a_pacer_waits_for_its_slowest_bucket_and_skips_sleeps_too_short_to_matter() -> None:
    clock = FakeClock()
    slept: list[float] = []
    own = TokenBucket(rate=1000.0, burst=1.0, clock=clock)
    shared = TokenBucket(rate=100.0, burst=1.0, clock=clock)
    pacer = Pacer([own, shared], sleep=slept.append)
    assert pacer.pace(11) == pytest.approx(0.1)  # the shared bucket is the slower
    assert slept == [pytest.approx(0.1)]
    tiny = Pacer([TokenBucket(rate=1e9, burst=1.0, clock=clock)], sleep=slept.append)
    assert 0 < tiny.pace(101) < MIN_SLEEP and len(slept) == 1  # owed, carried to the next piece
    assert not Pacer([]) and Pacer([]).pace(10**9) == 0.0  # no limit


def test_paced_reads_and_writes_move_every_byte_a_piece_at_a_time() -> None:
    moved: list[int] = []

    class Recorder(Pacer):
        def pace(self, amount: int) -> float:
            moved.append(amount)
            return 0.0

    class Sent:
        def __init__(self) -> None:
            self.data = bytearray()

        def sendall(self, data: memoryview) -> None:
            self.data += data

    sent = Sent()
    payload = bytes(range(256)) * (3 * PIECE // 256 + 1)
    _PacedSocket(sent, Recorder([])).sendall(payload)  # type: ignore[arg-type]
    assert bytes(sent.data) == payload and moved == [PIECE, PIECE, PIECE, 256]
    moved.clear()
    reader = _PacedReader(io.BufferedReader(io.BytesIO(b"GET / HTTP/1.1\r\n" + payload)), Recorder([]))
    assert reader.readline(100) == b"GET / HTTP/1.1\r\n"
    buffer = memoryview(bytearray(len(payload)))
    assert reader.readinto(buffer) == PIECE  # never more than a piece between two looks at the buckets
    assert moved == [16, PIECE]


def test_first_byte_latency_is_per_operation_with_a_default() -> None:
    settings = WanSettings(first_byte_ms=20, first_byte_ms_by_operation={"CompleteMultipartUpload": 60})
    assert settings.first_byte_s("GetObject") == pytest.approx(0.02)
    assert settings.first_byte_s("CompleteMultipartUpload") == pytest.approx(0.06)
    assert WanSettings().first_byte_s("CompleteMultipartUpload") == pytest.approx(0.06)
    for bad in ({"first_byte_ms": -1}, {"connection_mbps": 0}, {"total_mbps": -5}, {"burst_bytes": 0}):
        with pytest.raises(ValueError):
            WanSettings(**bad)  # type: ignore[arg-type]


def test_requests_are_named_by_s3_operation() -> None:
    assert s3_operation("PUT", "/b/k?partNumber=2&uploadId=u", []) == "UploadPart"
    assert s3_operation("POST", "/b/k?uploadId=u", []) == "CompleteMultipartUpload"
    assert s3_operation("GET", "/b/k", [("Range", "bytes=0-9")]) == "GetObject"
    assert s3_operation("GET", "/b?list-type=2&prefix=p", []) == "ListObjects"
    assert s3_operation("GET", "/", []) == "ListBuckets"


def test_in_flight_is_time_weighted_over_the_active_span() -> None:
    clock = FakeClock()
    in_flight = InFlight(clock)
    clock.now += 50  # idle before the first request: not part of the mean
    in_flight.begin()  # t=0
    clock.now += 1
    in_flight.begin()  # t=1: two in flight
    clock.now += 1
    in_flight.begin()  # t=2: three
    clock.now += 1
    in_flight.end()  # t=3: two
    in_flight.end()  # t=3: one
    clock.now += 1
    in_flight.end()  # t=4: none
    clock.now += 30  # idle after the last answer: not part of it either
    assert in_flight.now == 0
    # area: 1*1 + 2*1 + 3*1 + 1*1 = 7 over 4 s
    assert in_flight.take() == {"in_flight_mean": 1.75, "in_flight_max": 3.0, "in_flight_now": 0.0, "active_s": 4.0}
    assert in_flight.take() == {"in_flight_mean": 0.0, "in_flight_max": 0.0, "in_flight_now": 0.0, "active_s": 0.0}


def test_a_take_while_requests_are_in_flight_counts_them_from_there() -> None:
    clock = FakeClock()
    in_flight = InFlight(clock)
    in_flight.begin()
    in_flight.begin()
    clock.now += 1
    first = in_flight.take()
    assert first["in_flight_mean"] == 2.0 and first["in_flight_now"] == 2.0
    clock.now += 2
    in_flight.end()  # one left for 2 more seconds
    clock.now += 2
    in_flight.end()
    assert in_flight.wait_idle(timeout=0)
    assert in_flight.take() == {"in_flight_mean": 1.5, "in_flight_max": 2.0, "in_flight_now": 0.0, "active_s": 4.0}
