"""Start and stop a throw-away single-node Ceph RGW on 127.0.0.1 for the S3 tests.

moto answers like S3 but is not S3; Ceph's RADOS Gateway is a production S3
implementation, so the suite can also run against it. The cluster is as small
as Ceph allows: one mon, one OSD on memstore (data in RAM), one radosgw with
the beast frontend serving HTTP and HTTPS (certificate from a throw-away CA,
DIR/ca.pem), no mgr, no cephx. Everything it writes (config, data, logs,
sockets, PIDs) lives in DIR, and ``stop`` signals only the PIDs that ``start``
recorded there.

    python -m s3dcp_testkit.ceph_rgw start [--dir DIR]   # DIR defaults to /tmp/s3dcp-rgw
    . DIR/env                                           # S3DCP_RGW_* (also DIR/env.json)
    python -m s3dcp_testkit.ceph_rgw stop [--dir DIR]

``start(directory)`` and ``stop(directory)`` do the same from Python. Linux
only; if Ceph's binaries are missing, ``start`` installs the Debian packages
with apt-get (as root). Over HTTPS, boto3 >= 1.36 needs
``Config(request_checksum_calculation="when_required")``: this RGW version
answers its default aws-chunked uploads with 411 MissingContentLength.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import hmac
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from s3dcp_testkit.certificates import make_certificate
from s3dcp_testkit.ports import free_ports

DEFAULT_DIR = Path("/tmp/s3dcp-rgw")
USER_ID = "s3dcp-test"
ACCESS_KEY = "S3DCPTESTACCESSKEY01"
SECRET_KEY = "s3dcp-test-secret-key-not-a-real-secret-01"
REGION = "us-east-1"  # RGW takes any region in the signature's scope

CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
CEPH_PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
START_TIMEOUT = 120.0  # seconds from an empty DIR to a working ListBuckets (about 2 s seen)
STOP_TIMEOUT = 20.0  # seconds a daemon gets after SIGTERM before SIGKILL
OSD_PORTS = range(6800, 7301)  # the OSD binds in here (ms_bind_port_min/max), so ours stay out

MON, OSD, RGW = "mon.a", "osd.0", "client.rgw.s3dcp"  # Ceph's names for the three daemons


class StartError(RuntimeError):
    """The cluster did not come up; ``log`` is the file most likely to say why."""

    def __init__(self, reason: str, log: Path | None = None) -> None:
        super().__init__(reason)
        self.log = log


def start(directory: Path = DEFAULT_DIR) -> dict[str, str]:
    """Start a cluster in ``directory`` (wiped first) and return its S3DCP_RGW_* values.

    On failure it prints the tail of the relevant log, stops whatever it
    started and raises StartError, so no half-started daemons linger.
    """
    directory = directory.resolve()  # goes into ceph.conf, where stop() looks for it
    _install_missing()
    _prepare(directory)
    try:
        return _Cluster(directory).start()
    except BaseException as error:  # Ctrl-C included
        if isinstance(error, StartError) and error.log is not None:
            _print_tail(error.log)
        stop(directory)
        if isinstance(error, (StartError, KeyboardInterrupt)):
            raise
        raise StartError(f"{type(error).__name__}: {error}") from error


def stop(directory: Path = DEFAULT_DIR) -> None:
    """Stop the daemons recorded in ``directory`` in reverse start order: radosgw, OSD, mon.

    The order matters: radosgw ignores SIGTERM once its OSD is gone. A
    recorded PID whose command line does not name our ceph.conf is someone
    else's (PIDs get reused) and is left alone. Logs stay in ``directory``.
    """
    directory = directory.resolve()
    records = _read_pids(directory)
    if not records:
        _note(f"no cluster recorded in {directory}; nothing to stop")
        return
    for name, pid in reversed(records):
        if _terminate(pid, directory / "ceph.conf"):
            _note(f"stopped {name} (pid {pid})")
    for stale in ("pids", "env", "env.json"):
        (directory / stale).unlink(missing_ok=True)


class _Cluster:
    """One start: the paths, ports and deadline its steps share."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conf = directory / "ceph.conf"
        self.tls = directory / "tls"
        self.ca = directory / "ca.pem"
        self.cert, self.key = self.tls / "server.pem", self.tls / "server.key"  # written by _write_certificates
        self.fsid = str(uuid.uuid4())
        self.started = time.monotonic()
        self.deadline = self.started + START_TIMEOUT
        self.mon_port, self.http_port, self.https_port = _free_ports(3)
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.https = f"https://127.0.0.1:{self.https_port}"
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> dict[str, str]:
        for sub in ("run", "log", "tls", "rgw", OSD):  # OSD: memstore's mkfs does not create its directory
            (self.dir / sub).mkdir()
        self._write_certificates()
        self._write_conf()

        monmap = str(self.dir / "monmap")
        self._run(
            [
                "monmaptool",
                "--create",
                "--fsid",
                self.fsid,
                "--addv",
                MON.removeprefix("mon."),
                f"[v2:127.0.0.1:{self.mon_port}]",
                monmap,
            ]
        )
        self._run(["ceph-mon", "-c", str(self.conf), "-n", MON, "--mkfs", "--monmap", monmap], log=self._log(MON))
        self._spawn("ceph-mon", MON)
        self._wait("mon", self._mon_answers)

        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("osd", "create", osd_uuid).strip()
        if f"osd.{osd_id}" != OSD:
            raise StartError(f"ceph osd create gave id {osd_id!r}, expected {OSD}")
        self._run(["ceph-osd", "-c", str(self.conf), "-n", OSD, "--mkfs", "--osd-uuid", osd_uuid], log=self._log(OSD))
        self._spawn("ceph-osd", OSD)
        self._wait("osd", self._osd_up)

        self._spawn("radosgw", RGW)
        self._wait("radosgw", self._rgw_answers)
        self._run(
            [
                "radosgw-admin",
                "-c",
                str(self.conf),
                "user",
                "create",
                "--uid",
                USER_ID,
                "--display-name",
                "s3dcp tests",
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ]
        )
        for endpoint in (self.http, self.https):
            self._wait(f"ListBuckets on {endpoint}", functools.partial(self._list_buckets, endpoint))

        env = {
            "S3DCP_RGW_HTTP_ENDPOINT": self.http,
            "S3DCP_RGW_HTTPS_ENDPOINT": self.https,
            "S3DCP_RGW_ACCESS_KEY": ACCESS_KEY,
            "S3DCP_RGW_SECRET_KEY": SECRET_KEY,
            "S3DCP_RGW_CA_BUNDLE": str(self.ca),
            "S3DCP_RGW_DIR": str(self.dir),
        }
        (self.dir / "env").write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
        (self.dir / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        _note(f"ready in {time.monotonic() - self.started:.1f} s")
        return env

    # -- files

    def _write_conf(self) -> None:
        """ceph.conf: msgr2 only, no cephx, one replica, memstore, everything under DIR."""
        run, log = self.dir / "run", self.dir / "log"
        frontend = (
            f"beast endpoint=127.0.0.1:{self.http_port} ssl_endpoint=127.0.0.1:{self.https_port}"
            f" ssl_certificate={self.cert} ssl_private_key={self.key}"
        )
        self.conf.write_text(f"""\
[global]
fsid = {self.fsid}
mon host = [v2:127.0.0.1:{self.mon_port}]
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# with cephx off and the default (secure) modes, radosgw retries its mon
# authentication forever (get_initial_auth_request returned -13)
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
run dir = {run}
admin socket = {run}/$name.asok
pid file = {run}/$name.pid
log file = {log}/$name.log
crash dir = {self.dir}/crash
keyring = {self.dir}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
# the mon batches map changes once a second; the OSD's boot and radosgw's pool
# creation wait for about a dozen of them: start takes 2 s instead of 13 s
paxos propose interval = 0.1

[mon]
mon data = {self.dir}/$name

[osd]
osd data = {self.dir}/$name
osd objectstore = memstore
# memstore keeps objects in the OSD's RAM, 1 GiB at most by default
memstore device bytes = {4 << 30}
public addr = 127.0.0.1
cluster addr = 127.0.0.1

[client]
# ceph and radosgw-admin may run side by side: one socket each
admin socket = {run}/$name.$pid.asok

[{RGW}]
admin socket = {run}/$name.asok
rgw data = {self.dir}/rgw
rgw frontends = {frontend}
# free deleted objects after 30 s, not 2 h, so long runs do not fill memstore
rgw gc obj min wait = 30
rgw gc processor period = 30
# lifecycle runs from 00:00 to 06:00 and holds up radosgw's shutdown by 5-10 s
rgw enable lc threads = false
""")

    def _write_certificates(self) -> None:
        """A throw-away CA (DIR/ca.pem) and its certificate for 127.0.0.1 and localhost (DIR/tls)."""
        try:
            made = make_certificate(self.tls, timeout=self._remaining())
        except (subprocess.SubprocessError, RuntimeError) as error:
            raise StartError(f"the throw-away certificate: {error}") from error
        shutil.copyfile(made.ca, self.ca)
        self.cert, self.key = made.cert, made.key

    # -- processes

    def _log(self, name: str) -> Path:
        return self.dir / "log" / f"{name}.log"

    def _run(self, args: list[str], log: Path | None = None) -> str:
        """Run a setup command to the end and return its output; its stderr (or ``log``) explains a failure."""
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=self._remaining())
        except subprocess.TimeoutExpired:
            raise StartError(f"{shlex.join(args[:3])} ... did not finish in time", log) from None
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            reason = output[-1] if output else f"exit status {result.returncode}"
            raise StartError(f"{shlex.join(args[:3])} ... failed: {reason}", log)
        return result.stdout

    def _ceph(self, *args: str) -> str:
        return self._run(["ceph", "-c", str(self.conf), "--connect-timeout", "10", *args])

    def _spawn(self, binary: str, name: str) -> None:
        """Start a daemon in the foreground of its own session, so it outlives us, and record its PID."""
        with open(self.dir / "log" / f"{name}.out", "wb") as output:
            daemon = subprocess.Popen(
                [binary, "-f", "-c", str(self.conf), "-n", name],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons[name] = daemon
        with open(self.dir / "pids", "a") as pids:
            pids.write(f"{name} {daemon.pid}\n")

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise StartError(f"cluster not ready after {START_TIMEOUT:.0f} s")
        return remaining

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until true; fail at once if a daemon exits, or at the deadline."""
        while True:
            for name, daemon in self.daemons.items():
                if daemon.poll() is not None:
                    raise StartError(
                        f"{name} exited (status {daemon.returncode}) while waiting for {what}", self._log(name)
                    )
            if ready():
                _note(f"{what} ready after {time.monotonic() - self.started:.1f} s")
                return
            if time.monotonic() > self.deadline:
                newest = list(self.daemons)[-1]
                raise StartError(f"{what} not ready after {START_TIMEOUT:.0f} s", self._log(newest))
            time.sleep(0.25)

    # -- readiness

    def _mon_answers(self) -> bool:
        try:
            self._ceph("-s")
        except StartError:
            return False
        return True

    def _osd_up(self) -> bool:
        try:
            stat = json.loads(self._ceph("osd", "stat", "--format", "json"))
        except (StartError, json.JSONDecodeError):
            return False
        return int(stat.get("num_up_osds", 0)) >= 1

    def _rgw_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.http, timeout=5) as response:
                response.read()
        except urllib.error.HTTPError:
            return True  # any HTTP answer: radosgw listens
        except (OSError, http.client.HTTPException):
            return False
        return True

    def _list_buckets(self, endpoint: str) -> bool:
        """An authenticated ListBuckets answered for our user (an anonymous one gets 200 too)."""
        request = urllib.request.Request(endpoint + "/", headers=_sigv4_headers(endpoint))
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                body = response.read().decode()
        except (OSError, http.client.HTTPException):
            return False
        return f"<ID>{USER_ID}</ID>" in body


def _sigv4_headers(endpoint: str) -> dict[str, str]:
    """AWS Signature Version 4 headers for ``GET /`` (ListBuckets), so start needs no boto3."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": endpoint.split("://", 1)[1], "x-amz-content-sha256": payload, "x-amz-date": now}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["GET", "/", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
    scope = f"{now[:8]}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_KEY).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


# -- before start


def _install_missing() -> None:
    """apt-get install what is missing; if that fails, refresh the package lists and retry once."""
    packages = list(CEPH_PACKAGES) if any(shutil.which(b) is None for b in CEPH_BINARIES) else []
    if shutil.which("openssl") is None:
        packages.append("openssl")
    if not packages:
        return
    _note(f"installing {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env).returncode == 0:
        return
    if subprocess.run(["apt-get", "update"], env=env).returncode == 0:
        if subprocess.run(install, env=env).returncode == 0:
            return
    raise StartError(f"could not install {' '.join(packages)} with apt-get (as root?)")


def _prepare(directory: Path) -> None:
    """Refuse if a cluster recorded in ``directory`` still runs; otherwise wipe and recreate it.

    Only a directory that is empty or was made here (it has a ceph.conf) is
    wiped, so a mistyped --dir cannot delete someone's files.
    """
    if any(c.isspace() for c in str(directory)):
        raise StartError(f"{directory!r}: radosgw's frontend option cannot take a path with spaces")
    running = [f"{name} {pid}" for name, pid in _read_pids(directory) if _is_ours(pid, directory / "ceph.conf")]
    if running:
        raise StartError(f"the cluster in {directory} is still running ({', '.join(running)}); stop it first")
    if directory.exists():
        if any(directory.iterdir()) and not (directory / "ceph.conf").exists():
            raise StartError(f"{directory} is not empty and has no ceph.conf; not wiping it")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)


def _free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1, none in the OSD's range."""
    try:
        return free_ports(count, avoid=OSD_PORTS)
    except OSError as error:
        raise StartError(str(error)) from error


# -- PIDs


def _read_pids(directory: Path) -> list[tuple[str, int]]:
    """The ``name pid`` lines start recorded, in start order."""
    try:
        lines = (directory / "pids").read_text().split("\n")
    except FileNotFoundError:
        return []
    return [(name, int(pid)) for name, pid in (line.split() for line in lines if line.strip())]


def _is_ours(pid: int, conf: Path) -> bool:
    """True while ``pid`` is a live process started with our ceph.conf (not a reused PID, not a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (start() ran in this process) and exited
    except ChildProcessError:
        pass
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(conf).encode() in args


def _terminate(pid: int, conf: Path) -> bool:
    """SIGTERM, and SIGKILL after STOP_TIMEOUT; False if the process is not ours (or gone)."""
    if not _is_ours(pid, conf):
        return False
    for sig, patience in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if not _is_ours(pid, conf):
                return True
            time.sleep(0.1)
        _note(f"pid {pid} still running {patience:.0f} s after {sig.name}")
    raise RuntimeError(f"pid {pid} survived SIGKILL")


# -- output


def _note(message: str) -> None:
    print(f"ceph_rgw: {message}", file=sys.stderr, flush=True)


def _print_tail(log: Path, lines: int = 30) -> None:
    """The end of a daemon's log, where Ceph says why it stopped.

    Errors go to both the log and stderr (DIR/log/NAME.out), so the .out file
    is shown only when the log is empty, as when the daemon died before
    opening it. A crashed daemon ends both with a dump of recent events and
    log levels; the assertion and backtrace come just before that dump.
    """
    for path in (log, log.with_suffix(".out")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if tail := text.split("--- begin dump of recent events ---")[0].strip().splitlines()[-lines:]:
            print(f"--- last lines of {path}", *tail, "---", sep="\n", file=sys.stderr)
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop a throw-away Ceph RGW (S3) on 127.0.0.1.")
    parser.add_argument("command", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})")
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop(args.dir)
        return 0
    try:
        env = start(args.dir)
    except StartError as error:
        print(f"ceph_rgw: start failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"HTTP endpoint:  {env['S3DCP_RGW_HTTP_ENDPOINT']}")
    print(f"HTTPS endpoint: {env['S3DCP_RGW_HTTPS_ENDPOINT']}")
    print(f"environment:    {env['S3DCP_RGW_DIR']}/env")
    return 0


if __name__ == "__main__":
    sys.exit(main())
