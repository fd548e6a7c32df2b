"""A loopback S3 that answers like a distant one: first-byte latency and per-connection bandwidth.

On loopback a request is answered in microseconds and one connection moves
gigabytes a second; real S3 waits 10-30 ms before the first byte of an
answer (CompleteMultipartUpload about 60 ms), and one TCP connection carries
about 80-100 MB/s, so only many requests in flight make throughput.
:class:`WanEmulator` is the counting forwarder (``forwarder.RelayHandler``)
in front of a store that keeps the bytes (``memory_store``, or moto), with
three changes:

* **first-byte latency**: an answer's status line goes to the client no
  sooner than ``first_byte_ms`` (per S3 operation, see :class:`WanSettings`)
  after the request's last body byte was read. The store's own time counts
  inside it: the latency is a floor, not added to the store's time;
* **bandwidth**: every connection reads request bodies and writes answers
  through its own token buckets, one per direction, at ``connection_mbps``
  (MB/s, 10**6 bytes); with ``total_mbps`` also through one bucket per
  direction shared by all connections. Bytes move in pieces of
  :data:`PIECE` and the handler sleeps off what it owes;
* **counts**: :attr:`WanEmulator.counts` keys requests and bytes by S3
  operation (``op:UploadPart``, ``response_bytes:GetObject``) and counts
  ``connections`` opened; :attr:`WanEmulator.in_flight` keeps the requests
  in flight (from a request's head read to its answer's last byte sent):
  time-weighted mean and max since the last ``take()``.

Not modelled: packet loss, TCP slow start, the round trip of a TLS handshake
or of ``Expect: 100-continue`` (answered at once), throttling (503s: see the
fault proxy). TLS, when asked for, ends here, as at the forwarder.

    python -m s3dcp_testkit.wan --latency-ms 20 --conn-mbps 90      # memory_store behind it; prints the endpoint

In the caller's process the emulator's threads share one interpreter with
the client's: while the client fills parts, the link slows down with it
(measured: two connections moved 11 MB/s of a 32 MB/s link in-process, 32
in a process of their own). :class:`WanProcess` runs the emulator and an
in-memory store in a process of their own, for tests that judge rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from s3dcp_testkit.forwarder import RelayHandler, RelayServer, Upstream, upstream_address
from s3dcp_testkit.loopback import RECV_BUFFER, BackgroundServer
from s3dcp_testkit.null_sink import s3_operation

MB = 1_000_000  # rates are in MB/s, as network links are quoted
PIECE = 128 * 1024  # bytes read or written between two looks at the token buckets
MIN_SLEEP = 0.001  # shorter debts are carried to the next piece rather than slept
DEFAULT_FIRST_BYTE_MS: Mapping[str, float] = MappingProxyType({"CompleteMultipartUpload": 60.0})

Clock = Callable[[], float]


@dataclass(frozen=True, kw_only=True)
class WanSettings:
    """What the emulated link looks like.

    Attributes:
        first_byte_ms: time to first byte of every answer (20 ms), unless
            ``first_byte_ms_by_operation`` names its S3 operation.
        first_byte_ms_by_operation: per-operation exceptions (default:
            CompleteMultipartUpload 60 ms), e.g. ``{"GetObject": 15.0}``.
        connection_mbps: each connection's rate, per direction, in MB/s
            (90); None for no limit.
        total_mbps: a rate shared by all connections, per direction, in
            MB/s; None (default) for none.
        burst_bytes: how far a bucket may fill while a connection is idle
            (256 KiB), so a short answer goes out at once.
        receive_buffer_bytes: the socket receive buffer asked of the kernel
            for client connections (None: the loopback servers' 4 MiB).
            With the client's send buffer it holds the request bytes a
            client has handed over but the link has not carried yet: a
            small one makes a client's send wait on the link, as over a
            real WAN whose in-flight bytes are bounded, which tests of
            send timeouts need.
    """

    first_byte_ms: float = 20.0
    first_byte_ms_by_operation: Mapping[str, float] = field(default_factory=lambda: DEFAULT_FIRST_BYTE_MS)
    connection_mbps: float | None = 90.0
    total_mbps: float | None = None
    burst_bytes: int = 256 * 1024
    receive_buffer_bytes: int | None = None

    def __post_init__(self) -> None:
        latencies = [self.first_byte_ms, *self.first_byte_ms_by_operation.values()]
        if any(ms < 0 for ms in latencies):
            raise ValueError(f"first-byte latencies must be >= 0 ms, got {latencies}")
        for name in ("connection_mbps", "total_mbps"):
            rate = getattr(self, name)
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be > 0 MB/s, or None for no limit; got {rate}")
        if self.burst_bytes < 1:
            raise ValueError(f"burst_bytes must be >= 1, got {self.burst_bytes}")
        if self.receive_buffer_bytes is not None and self.receive_buffer_bytes < 1:
            raise ValueError(f"receive_buffer_bytes must be >= 1, or None; got {self.receive_buffer_bytes}")

    def first_byte_s(self, operation: str) -> float:
        """Seconds from a request's last byte to its answer's first, for this S3 operation."""
        return self.first_byte_ms_by_operation.get(operation, self.first_byte_ms) / 1000


class TokenBucket:
    """``rate`` bytes a second, with up to ``burst`` saved while idle; thread-safe.

    :meth:`reserve` takes the bytes at once (the level may go below zero)
    and says how long the caller must wait for the bucket to be back at
    zero, so callers sharing a bucket queue up in the order they reserved.
    """

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be > 0, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._level = float(burst)
        self._stamp = clock()

    def reserve(self, amount: int) -> float:
        """Take ``amount`` bytes; returns the seconds to wait before they may move (0.0 if none)."""
        with self._lock:
            now = self._clock()
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            self._level -= amount
            return max(0.0, -self._level / self.rate)


class Pacer:
    """The buckets one direction of one connection goes through (its own, and the shared one if any)."""

    def __init__(self, buckets: list[TokenBucket], sleep: Callable[[float], None] = time.sleep) -> None:
        self._buckets = buckets
        self._sleep = sleep

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def pace(self, amount: int) -> float:
        """Account for ``amount`` bytes moved; sleeps the wait if it is worth a sleep, and returns it."""
        wait = max((bucket.reserve(amount) for bucket in self._buckets), default=0.0)
        if wait >= MIN_SLEEP:
            self._sleep(wait)
        return wait


class InFlight:
    """Requests in flight: the number now, and its time-weighted mean and max since the last :meth:`take`.

    The mean is over the *active span*: from the first request begun since
    the last ``take()`` (or that ``take()`` itself, if requests were in
    flight then) to the last one ended (or now, if some still are), so a
    client's start-up and the driver's waiting do not dilute it.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        self._now = 0
        self._area = 0.0  # integral of the count over time since the last take
        self._stamp = clock()
        self._max = 0
        self._first: float | None = None
        self._last_end: float | None = None

    def _advance(self, now: float) -> None:
        self._area += self._now * (now - self._stamp)
        self._stamp = now

    def begin(self) -> None:
        with self._changed:
            now = self._clock()
            self._advance(now)
            if self._first is None:
                self._first = now
            self._now += 1
            self._max = max(self._max, self._now)

    def end(self) -> None:
        with self._changed:
            now = self._clock()
            self._advance(now)
            self._now -= 1
            if self._now == 0:
                self._last_end = now
                self._changed.notify_all()

    @property
    def now(self) -> int:
        with self._changed:
            return self._now

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (an answer's last byte can reach a client before it is counted out)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._now == 0, timeout)

    def take(self) -> dict[str, float]:
        """``in_flight_mean``, ``in_flight_max``, ``in_flight_now`` and ``active_s``; then starts again."""
        with self._changed:
            now = self._clock()
            self._advance(now)
            end = now if self._now else self._last_end
            span = end - self._first if self._first is not None and end is not None else 0.0
            report = {
                "in_flight_mean": self._area / span if span > 0 else 0.0,
                "in_flight_max": float(self._max),
                "in_flight_now": float(self._now),
                "active_s": span,
            }
            self._area = 0.0
            self._max = self._now
            self._first = now if self._now else None
            self._last_end = None
            return report


class _PacedReader:
    """A connection's buffered reader whose bytes go through a :class:`Pacer` (request heads and bodies)."""

    def __init__(self, rfile: Any, pacer: Pacer) -> None:
        self._rfile = rfile
        self._pacer = pacer

    def readinto(self, buffer: memoryview) -> int:
        got = int(self._rfile.readinto(buffer[:PIECE]))
        self._pacer.pace(got)
        return got

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._rfile.readline(limit)
        self._pacer.pace(len(line))
        return line

    def close(self) -> None:
        self._rfile.close()


class _PacedSocket:
    """A client connection whose ``sendall`` goes through a :class:`Pacer`, a piece at a time."""

    def __init__(self, conn: socket.socket, pacer: Pacer) -> None:
        self._conn = conn
        self._pacer = pacer

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), PIECE):
            piece = view[start : start + PIECE]
            self._conn.sendall(piece)
            self._pacer.pace(len(piece))

    def close(self) -> None:
        self._conn.close()


class _WanHandler(RelayHandler):
    server: _WanServer
    _sent_at = 0.0

    def _connection(self, conn: socket.socket, rfile: Any) -> tuple[Any, Any]:
        server = self.server
        server.counts.note("connections")
        return (
            _PacedSocket(conn, server.pacer(server.shared_out)),
            _PacedReader(rfile, server.pacer(server.shared_in)),
        )

    def _operation(self, request_line: str, headers: list[tuple[str, str]]) -> str:
        method, target = (request_line.split(" ", 2) + ["", ""])[:2]
        return s3_operation(method, target, headers)

    def _relay(
        self,
        conn: Any,
        rfile: Any,
        upstream: Upstream,
        buffer: memoryview,
        request_line: str,
        headers: list[tuple[str, str]],
    ) -> bool:
        in_flight = self.server.in_flight
        in_flight.begin()
        try:
            return super()._relay(conn, rfile, upstream, buffer, request_line, headers)
        finally:
            in_flight.end()

    def _request_sent(self) -> None:
        self._sent_at = time.monotonic()

    def _answering(self, operation: str) -> None:
        wait = self.server.settings.first_byte_s(operation) - (time.monotonic() - self._sent_at)
        if wait > 0:
            time.sleep(wait)


class _WanServer(RelayServer):
    def __init__(self, upstream: tuple[str, int], tls: Any, settings: WanSettings) -> None:
        self.settings = settings
        self.in_flight = InFlight()
        self.shared_in = self._bucket(settings.total_mbps)
        self.shared_out = self._bucket(settings.total_mbps)
        receive_buffer = settings.receive_buffer_bytes or RECV_BUFFER
        super().__init__(upstream, tls, _WanHandler, receive_buffer=receive_buffer)

    def _bucket(self, mbps: float | None) -> TokenBucket | None:
        return None if mbps is None else TokenBucket(mbps * MB, self.settings.burst_bytes)

    def pacer(self, shared: TokenBucket | None) -> Pacer:
        """One direction of a new connection: its own bucket, and the shared one."""
        own = self._bucket(self.settings.connection_mbps)
        return Pacer([bucket for bucket in (own, shared) if bucket is not None])


class WanEmulator(BackgroundServer):
    """Relays HTTP(S) on 127.0.0.1:PORT to ``upstream_url`` (plain HTTP) at WAN pace; a context manager.

    Attributes:
        endpoint_url: what clients use, once started.
        settings: the :class:`WanSettings`.
        counts: a :class:`loopback.Counts` keyed by S3 operation, and ``connections``.
        in_flight: the :class:`InFlight` requests.
    """

    thread_name = "wan"

    def __init__(
        self, upstream_url: str, settings: WanSettings | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        super().__init__(tls)
        self._upstream = upstream_address(upstream_url)
        self.settings = settings or WanSettings()
        self.in_flight = InFlight()

    def _make_server(self) -> _WanServer:
        server = _WanServer(self._upstream, self._tls, self.settings)
        self.in_flight = server.in_flight
        return server


class WanProcess:
    """The emulator with a :class:`memory_store.MemoryStore` behind it, in a process of their own; a context manager.

    Attributes:
        endpoint_url: the emulator's, once started.
        store_url: the store's own (no emulated link), once started.
    """

    def __init__(self, settings: WanSettings) -> None:
        self.settings = settings
        self.endpoint_url = ""
        self.store_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> WanProcess:
        fields = {f.name: getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)}
        fields["first_byte_ms_by_operation"] = dict(self.settings.first_byte_ms_by_operation)
        command = [sys.executable, "-m", "s3dcp_testkit.wan", "--control", "--settings-json", json.dumps(fields)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            started = self._answer()
        except BaseException:
            self.__exit__()
            raise
        self.endpoint_url, self.store_url = started["endpoint_url"], started["store_url"]
        return self

    def take(self) -> dict[str, float]:
        """:meth:`InFlight.take` of the emulator, once no request is in flight (or after 5 s)."""
        assert self._process is not None and self._process.stdin is not None, "not started"
        self._process.stdin.write("take\n")
        self._process.stdin.flush()
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the WAN emulator's process ended (exit code {self._process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __exit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # end of input: it stops
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()


def _controlled(wan: WanEmulator, store_url: str) -> None:
    """``--control``: the endpoints as a JSON line, then one JSON line of requests in flight per ``take`` read."""
    print(json.dumps({"endpoint_url": wan.endpoint_url, "store_url": store_url}), flush=True)
    for line in sys.stdin:
        if line.strip() == "take":
            wan.in_flight.wait_idle(5)
            print(json.dumps(wan.in_flight.take()), flush=True)


def settings_from(args: argparse.Namespace) -> WanSettings:
    """:class:`WanSettings` from the options :func:`add_options` adds (0 MB/s = no limit)."""
    if getattr(args, "settings_json", None):
        return WanSettings(**json.loads(args.settings_json))
    return WanSettings(
        first_byte_ms=args.latency_ms,
        first_byte_ms_by_operation={"CompleteMultipartUpload": args.complete_latency_ms},
        connection_mbps=args.conn_mbps or None,
        total_mbps=args.total_mbps or None,
    )


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The emulator's knobs as command-line options (``benchmarks/compare.py --server wan`` has them too)."""
    parser.add_argument("--latency-ms", type=float, default=20.0, help="time to first byte of every answer (20)")
    parser.add_argument(
        "--complete-latency-ms", type=float, default=60.0, help="time to first byte of CompleteMultipartUpload (60)"
    )
    parser.add_argument("--conn-mbps", type=float, default=90.0, help="MB/s per connection and direction; 0: none")
    parser.add_argument("--total-mbps", type=float, default=0.0, help="MB/s across connections, per direction; 0: none")


def main() -> None:
    from contextlib import nullcontext

    from s3dcp_testkit.certificates import make_certificate
    from s3dcp_testkit.memory_store import MemoryStore
    from s3dcp_testkit.moto_server import MotoServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(parser)
    parser.add_argument("--store", choices=["memory", "moto"], default="memory", help="the store started behind it")
    parser.add_argument("--upstream", help="an S3 server's http:// URL to front instead of starting a store")
    parser.add_argument("--tls-dir", type=Path, help="speak HTTPS with a throw-away CA written here (ca.pem)")
    parser.add_argument("--settings-json", help="every WanSettings field as JSON, instead of the options above")
    parser.add_argument(
        "--control", action="store_true", help="endpoints as JSON; 'take' on stdin answers in flight; stop at EOF"
    )
    args = parser.parse_args()
    tls = None
    if args.tls_dir:
        made = make_certificate(args.tls_dir)
        tls = (made.cert, made.key)
    store = nullcontext(args.upstream) if args.upstream else MotoServer() if args.store == "moto" else MemoryStore()
    with store as started:
        upstream = started if isinstance(started, str) else started.endpoint_url
        with WanEmulator(upstream, settings_from(args), tls) as wan:
            if args.control:
                _controlled(wan, upstream)
                return
            print(wan.endpoint_url, flush=True)
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
            print(wan.counts.take(), wan.in_flight.take())


if __name__ == "__main__":
    main()
