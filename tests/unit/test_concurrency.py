"""The adaptive number of requests in flight: rounds measured on a fake clock."""

from __future__ import annotations

import logging

import pytest

from s3dcp._config import S3ClientConfig, resolve_settings
from s3dcp._s3.client import S3Client
from s3dcp._s3.concurrency import GAIN, GROWTH, SETTLED, AdaptiveLimit, Sent

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_round(limit: AdaptiveLimit, clock: Clock, seconds: float, size: int = 16 * MB) -> None:
    """As many requests as the level, sent together, each taking ``seconds``."""
    sent = [limit.started() for _ in range(limit.current)]
    clock.now += seconds
    for token in sent:
        limit.finished(token, size)


def test_on_a_link_bound_per_connection_the_level_grows_to_the_maximum_and_stays() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 8, clock=clock)
    run_round(limit, clock, 0.2)  # 8 at 80 MB/s each
    assert limit.current == 8 * GROWTH == 32
    assert not limit.settled  # 32 is tried before it is kept
    run_round(limit, clock, 0.2)  # 32 at the same rate each: four times the throughput
    assert (limit.current, limit.settled) == (32, True)
    assert [level for level, _ in limit.rounds] == [8, 32]
    assert limit.rounds[1][1] == pytest.approx(4 * limit.rounds[0][1])


def test_where_more_requests_only_share_the_same_throughput_the_level_goes_back() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 8, clock=clock)
    run_round(limit, clock, 0.2)
    run_round(limit, clock, 0.2 * 32 / 8 / (GAIN - 0.05))  # four times the requests, each much slower
    assert (limit.current, limit.settled) == (8, True)
    run_round(limit, clock, 0.01)  # once settled, a fast round changes nothing
    assert limit.current == 8


def test_a_gain_just_above_the_threshold_is_kept() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 8, clock=clock)
    run_round(limit, clock, 0.2)
    run_round(limit, clock, 0.2 * 32 / 8 / (GAIN + 0.05))
    assert (limit.current, limit.settled) == (32, True)


def test_growth_stops_at_the_maximum_even_between_steps() -> None:
    clock = Clock()
    limit = AdaptiveLimit(12, 4, clock=clock)
    run_round(limit, clock, 0.2)
    assert limit.current == 12  # not 16
    run_round(limit, clock, 0.2)
    assert (limit.current, limit.settled) == (12, True)


def test_throttling_halves_the_level_and_ends_growth() -> None:
    clock = Clock()
    throttles = [0]
    limit = AdaptiveLimit(32, 8, throttled=lambda: throttles[0], clock=clock)
    run_round(limit, clock, 0.2)
    assert limit.current == 32
    throttles[0] = 3  # the store answered 503 SlowDown during the round
    run_round(limit, clock, 0.2)
    assert (limit.current, limit.settled) == (16, True)
    throttles[0] = 4
    run_round(limit, clock, 0.2)
    assert limit.current == 8  # settled levels still halve when throttled
    run_round(limit, clock, 0.2)
    assert limit.current == 8  # and stay when not


def test_an_initial_level_at_the_maximum_is_fixed() -> None:
    clock = Clock()
    limit = AdaptiveLimit(8, 32, clock=clock)
    assert (limit.current, limit.settled) == (8, True)
    run_round(limit, clock, 0.2)
    assert limit.current == 8
    fixed = AdaptiveLimit.fixed(3)
    assert (fixed.current, fixed.maximum, fixed.settled) == (3, 3, True)


def test_requests_sent_at_the_level_before_do_not_count_toward_the_new_one() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 2, clock=clock)
    early = [limit.started() for _ in range(6)]  # sent before the level changed (a pool may be ahead)
    clock.now += 0.2
    limit.finished(early[0], 16 * MB)
    limit.finished(early[1], 16 * MB)
    assert limit.current == 8
    for token in early[2:]:
        clock.now += 10.0  # very slow: if they counted, 8 would look no better than 2
        limit.finished(token, 16 * MB)
    assert limit.rounds == [(2, pytest.approx(6 * 16 * MB / 0.2))]  # six in flight, 80 MB/s each
    assert not limit.settled
    run_round(limit, clock, 0.1)  # eight in flight, 160 MB/s each
    assert limit.current == 32


def test_failed_requests_are_not_measured() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 2, clock=clock)
    failed = limit.started()
    clock.now += 50.0
    limit.finished(failed, 0)
    assert limit.rounds == []
    run_round(limit, clock, 0.2)
    assert limit.rounds == [(2, pytest.approx(2 * 16 * MB / 0.2))]


def test_the_crowd_a_request_found_is_what_counts_not_the_level_allowed() -> None:
    """A transfer that never fills its level (it has little to send) gains nothing from a higher one."""
    clock = Clock()
    limit = AdaptiveLimit(32, 2, clock=clock)
    for _ in range(2):
        token = limit.started()  # one at a time: a crowd of one
        clock.now += 0.2
        limit.finished(token, 16 * MB)
    assert limit.current == 8
    for _ in range(8):
        token = limit.started()
        clock.now += 0.2
        limit.finished(token, 16 * MB)
    assert (limit.current, limit.settled) == (2, True)


def test_the_requests_in_flight_are_averaged_over_each_ones_life() -> None:
    """One request alone for 0.2 s, then joined by three for 0.2 s: it saw 2.5 on average, they saw 4."""
    clock = Clock()
    limit = AdaptiveLimit(32, 4, clock=clock)
    first = limit.started()
    clock.now += 0.2
    others = [limit.started() for _ in range(3)]
    clock.now += 0.2
    for token in [first, *others]:
        limit.finished(token, 16 * MB)
    mean_crowd = (2.5 + 3 * 4.0) / 4
    median_rate = 16 * MB / 0.2  # of 40, 80, 80 and 80 MB/s
    assert limit.rounds == [(4, pytest.approx(mean_crowd * median_rate))]
    assert isinstance(first, Sent)


def test_each_measured_round_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, 8, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="s3dcp"):
        run_round(limit, clock, 0.2)
        run_round(limit, clock, 4.0)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "requests in flight 8 -> 32",
        "requests in flight 32 -> 8",
    ]
    assert "8 at 640 MB/s" in caplog.records[-1].getMessage()


def test_a_level_kept_at_the_maximum_is_remembered() -> None:
    clock, kept = Clock(), []
    limit = AdaptiveLimit(32, 8, clock=clock, remember=kept.append)
    run_round(limit, clock, 0.2)
    assert kept == []  # 32 is not known to pay yet
    run_round(limit, clock, 0.2)
    assert kept == [32]


def test_a_level_gone_back_to_is_remembered_when_the_higher_one_was_really_filled() -> None:
    clock, kept = Clock(), []
    limit = AdaptiveLimit(32, 8, clock=clock, remember=kept.append)
    run_round(limit, clock, 0.2)
    run_round(limit, clock, 4.0)  # 32 in flight, moving what 8 moved
    assert (limit.current, kept) == (8, [8])


def test_a_level_gone_back_to_for_want_of_work_is_not_remembered() -> None:
    """The transfer ran out of requests to send: that says nothing of what the store could take."""
    clock, kept = Clock(), []
    limit = AdaptiveLimit(32, 2, clock=clock, remember=kept.append)
    run_round(limit, clock, 0.2)
    for _ in range(8):  # level 8, but one request at a time
        token = limit.started()
        clock.now += 0.2
        limit.finished(token, 16 * MB)
    assert (limit.current, limit.settled, kept) == (2, True, [])


def test_a_level_throttling_chose_is_not_remembered() -> None:
    clock, kept, throttles = Clock(), [], [0]
    limit = AdaptiveLimit(32, 8, throttled=lambda: throttles[0], clock=clock, remember=kept.append)
    run_round(limit, clock, 0.2)
    throttles[0] = 1
    run_round(limit, clock, 0.2)
    assert (limit.current, kept) == (16, [])


def test_a_settled_start_stays_put_but_still_halves_when_throttled() -> None:
    clock, kept, throttles = Clock(), [], [0]
    limit = AdaptiveLimit(32, 8, throttled=lambda: throttles[0], clock=clock, settled=True, remember=kept.append)
    run_round(limit, clock, 0.2)
    run_round(limit, clock, 0.01)
    assert (limit.current, limit.settled, limit.rounds, kept) == (8, True, [], [])
    throttles[0] = 1
    run_round(limit, clock, 0.2)
    assert limit.current == 4


def client(endpoint: str, **config: int) -> S3Client:
    return S3Client(resolve_settings("us-east-1", S3ClientConfig(endpoint_url=endpoint, **config), {}))


def test_a_transfer_starts_where_the_last_one_in_its_direction_to_its_endpoint_settled() -> None:
    SETTLED[(client("http://store-a:9000").settings.describe_endpoint(), "upload")] = 32
    upload = client("http://store-a:9000").concurrency("upload")
    assert (upload.current, upload.settled) == (32, True)
    download = client("http://store-a:9000").concurrency("download")
    assert (download.current, download.settled) == (16, False)  # initial_concurrency
    elsewhere = client("http://store-b:9000").concurrency("upload")
    assert (elsewhere.current, elsewhere.settled) == (16, False)
    fixed = client("http://store-a:9000", initial_concurrency=12, max_concurrency=12).concurrency("upload")
    assert (fixed.current, fixed.settled) == (12, True)  # a fixed level is the user's choice
