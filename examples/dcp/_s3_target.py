"""Where the examples save: your S3, or a throw-away local server.

With ``--uri s3://bucket/prefix`` (or ``S3DCP_EXAMPLE_URI``) the examples use
that bucket with the standard AWS settings (credentials chain, AWS_REGION,
AWS_ENDPOINT_URL for MinIO/Ceph/...), inside a new sub-prefix of their own
(``prefix/s3dcp-demo-<UTC time>-<random>``): they save, prune and clean up
there only, so whatever else the bucket holds is never touched. Without a
URI they start moto's S3 server on 127.0.0.1, point the AWS variables at it
and create a bucket (``s3dcp_testkit.moto_server.local_s3``, installed with
the test venv).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone


def fresh_prefix(uri: str) -> str:
    """A sub-prefix of ``uri`` that no one else uses: the examples delete things, but only there."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{uri.rstrip('/')}/s3dcp-demo-{stamp}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def s3_target(uri: str | None) -> Iterator[str]:
    """Yield the ``s3://`` prefix to use: a fresh one under ``uri``, or on a local server if none is given."""
    uri = uri or os.environ.get("S3DCP_EXAMPLE_URI")
    if uri:
        base = fresh_prefix(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        print(
            f"using {base} (endpoint: {endpoint}): a new prefix of its own under {uri.rstrip('/')}; "
            "the example saves, prunes and cleans up there only"
        )
        yield base
        return
    from s3dcp_testkit.moto_server import local_s3  # the test venv's (make install)

    bucket = "s3dcp-demo"
    with local_s3(bucket) as server:
        print(f"no S3 configured: started a local S3 server (moto) at {server.endpoint_url}")
        yield f"s3://{bucket}/run-{uuid.uuid4().hex[:8]}"
