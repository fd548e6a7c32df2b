"""The progress line: what it says, when it redraws, and that it stays quiet off a terminal."""

from __future__ import annotations

import io

from s3dcp._progress import Progress, human_bytes


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frames(stream: io.StringIO) -> list[str]:
    """Each drawn state of the line, trailing padding removed."""
    return [frame.rstrip() for frame in stream.getvalue().split("\r")[1:]]


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**3, 3 * 1024**5)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 GiB",
        "3072.0 TiB",
    ]


def test_bytes_percentage_and_rate_as_bytes_flow() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress("copied", 3, 4 * 1024 * 1024, stream, clock=clock, interval=0.5)
    clock.now += 2
    progress.add_bytes(1024 * 1024)
    assert frames(stream) == ["copied 0/3 objects, 1.0 MiB of 4.0 MiB (25%), 512.0 KiB/s"]

    clock.now += 0.1  # within the interval: bytes alone do not redraw
    progress.add_bytes(1024 * 1024)
    assert len(frames(stream)) == 1
    progress.object_done("__0_0.distcp", 2 * 1024 * 1024)  # an object done always does
    assert frames(stream)[-1].startswith("copied 1/3 objects, 2.0 MiB of 4.0 MiB (50%), ")

    clock.now += 0.5
    progress.add_bytes(512 * 1024)
    assert frames(stream)[-1].startswith("copied 1/3 objects, 2.5 MiB of 4.0 MiB (62%), ")


def test_a_failed_attempt_takes_its_bytes_back_and_the_percentage_stays_in_range() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress("verified", None, None, stream, clock=clock, interval=0)
    progress.set_totals(2, 1000)
    progress.add_bytes(600)
    progress.add_bytes(-600)
    assert frames(stream)[-1] == "verified 0/2 objects, 0 B of 1000 B (0%)"
    progress.add_bytes(1500)  # objects may be longer than their metadata says
    assert "(100%)" in frames(stream)[-1]


def test_a_shorter_line_wipes_the_longer_one_and_done_ends_the_line() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress("read", None, None, stream, clock=clock, interval=0)
    clock.now += 1
    progress.add_bytes(10 * 1024 * 1024)
    longer = stream.getvalue().split("\r")[-1]
    progress.add_bytes(-10 * 1024 * 1024 + 1)
    shorter = stream.getvalue().split("\r")[-1]
    assert len(shorter) >= len(longer) and shorter.rstrip() == "read 0 objects, 1 B, 1 B/s"
    progress.done()
    assert stream.getvalue().endswith("\n") and frames(stream)[-1] == "read 0 objects, 1 B, 1 B/s"


def test_objects_without_a_byte_feed_count_their_size() -> None:
    stream, clock = FakeTerminal(), FakeClock()
    progress = Progress("copied", None, None, stream, clock=clock)
    progress("a", 2048)
    assert (progress.objects, progress.bytes) == (1, 2048)
    assert frames(stream) == ["copied 1 objects, 2.0 KiB"]  # no time has passed: no rate yet


def test_silent_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress("copied", 1, 10, stream)
    progress.add_bytes(10)
    progress.object_done("a", 10)
    progress.done()
    assert stream.getvalue() == "" and (progress.objects, progress.bytes) == (1, 10)


def test_done_after_nothing_writes_nothing() -> None:
    stream = FakeTerminal()
    Progress("copied", None, None, stream).done()
    assert stream.getvalue() == ""
