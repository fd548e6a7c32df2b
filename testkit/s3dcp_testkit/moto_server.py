"""Run moto's S3 server as a child process on 127.0.0.1 and a free port.

Used by the test fixtures, the benchmarks, and the examples when no S3
endpoint is configured (``local_s3``). The child binds port 0, so there is no
race for a port; it prints the port it got on one line, and the parent waits
for that line (no sleeps). To try s3dcp by hand against one:

    python -m s3dcp_testkit.moto_server --bucket bucket   # prints the AWS settings to export; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

_CHILD = """
import sys, threading
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # parent closes stdin (or dies): stop
server.stop()
"""

ACCESS_KEY = "s3dcp-test-access-key"
SECRET_KEY = "s3dcp-test-secret-key"


class MotoServer:
    """A moto S3 server in a child process; a context manager.

    Attributes:
        endpoint_url: ``http://127.0.0.1:PORT`` once started.
    """

    def __init__(self, unauthenticated_requests: int | None = None) -> None:
        """Args:
        unauthenticated_requests: if set, moto checks signatures and IAM
            permissions after this many requests (the first ones set up a user).
        """
        self.endpoint_url = ""
        self._unauthenticated = unauthenticated_requests
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> MotoServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self._unauthenticated is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self._unauthenticated)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self._process.stdout is not None
        line = self._read_line_or_fail(self._process.stdout)
        self.endpoint_url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def _read_line_or_fail(self, stream: object, timeout: float = 60.0) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)  # type: ignore[attr-defined]
        reader.start()
        reader.join(timeout)
        if not result or not result[0].startswith("PORT "):
            self.stop()
            raise RuntimeError("moto server did not start (is moto[server] installed?)")
        return result[0]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# what would send requests elsewhere, or as someone else, than the variables local_s3 sets
_OTHER_AWS_SETTINGS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


@contextmanager
def local_s3(bucket: str, region: str = "us-east-1") -> Iterator[MotoServer]:
    """A moto server with ``bucket`` created, and the standard AWS variables of this process pointing at it.

    Sets ``AWS_ENDPOINT_URL``, the credentials and ``AWS_REGION`` (and drops a
    profile, session token or S3-only endpoint), so anything that reads
    the environment, boto3 or s3dcp, talks to it. The variables are left
    set when the server stops. Needs boto3.
    """
    import boto3

    with MotoServer() as server:
        os.environ.update(
            AWS_ENDPOINT_URL=server.endpoint_url,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION=region,
        )
        for name in _OTHER_AWS_SETTINGS:
            os.environ.pop(name, None)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description="A local S3 server (moto) on 127.0.0.1, until Ctrl-C or end of input.")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    parser.add_argument("--region", default="us-east-1", help="AWS_REGION to print (us-east-1)")
    args = parser.parse_args()
    with MotoServer() as server:
        settings = {
            "AWS_ENDPOINT_URL": server.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": args.region,
        }
        if args.bucket:
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=server.endpoint_url,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=args.region,
            )
            for bucket in args.bucket:
                client.create_bucket(Bucket=bucket)
        print(f"# moto S3 server at {server.endpoint_url}, buckets: {', '.join(args.bucket) or 'none'}")
        print("# in another shell, to use it:")
        print("export " + " ".join(f"{name}={value}" for name, value in settings.items()), flush=True)
        try:
            sys.stdin.read()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
