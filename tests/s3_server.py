"""A real S3 API server on loopback for tests: moto's threaded server, one per test session.

Nothing but 127.0.0.1 is contacted. The dummy credentials and ``AWS_EC2_METADATA_DISABLED``
keep botocore from probing the instance-metadata address. The endpoint reaches code only as
an argument (``storage.endpoint_url``, ``--endpoint-url``): the ``s3`` fixture (tests/conftest.py)
points ``AWS_ENDPOINT_URL`` at a trap.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    """A port that was free a moment ago: bound to 127.0.0.1:0, then released, so another
    process may take it before the caller binds it. Callers retry on a bind error with a fresh
    one (``RayHead.start`` and ``StaticCluster._start_worker`` retry a failed start on fresh
    ports); where the tool takes port 0 and reports the one it bound, pass 0 instead
    (:func:`start` does for moto)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """Handle on the running server: its endpoint and one bucket created for the session."""

    endpoint_url: str
    bucket: str
    env: dict = field(default_factory=dict)  # the credentials a subprocess / Ray worker needs
    trap: object = None  # tests/storage_trap.Trap behind AWS_ENDPOINT_URL (the s3 fixture sets it)

    @property
    def options(self) -> dict:
        """storage_options for :mod:`clipvg.data.storage` calls."""
        return {"endpoint_url": self.endpoint_url}

    def uri(self, prefix: str = "") -> str:
        """A fresh ``s3://bucket/<prefix>-<uuid>`` URI, so tests never see each other's keys."""
        return f"s3://{self.bucket}/{prefix or 'data'}-{uuid.uuid4().hex[:8]}"


def start(monkeypatch_env) -> tuple[S3Server, object]:
    """Start moto on a free loopback port and create a bucket; returns (handle, server).

    Port 0: the server binds a free port itself and reports it (no window between choosing a
    port and binding it, in which another process could take it; a bind error in moto's
    thread would leave ``start()`` waiting forever)."""
    from moto.server import ThreadedMotoServer
    import boto3

    for k, v in S3_ENV.items():
        monkeypatch_env(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "clipvg-test"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return S3Server(endpoint, bucket, dict(S3_ENV)), server
