"""Suite-wide fixtures.

Torch runs single-threaded in tests: the models are tiny, the machine has 2 cores, and torch's
OpenMP threads then spend more time waiting on each other than computing (measured: the model
tests took 40-50 s with 2 threads under load, 10 s with 1).
"""

import os
import secrets
from pathlib import Path

# Token authentication stays on in every Ray test, as on a cluster. Ray reads its auth mode
# when it is first imported, which any test module may do at collection (tests/cluster/ does,
# before tests/distributed/), so it is set here, at the import of the first conftest.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

import pytest  # noqa: E402
import torch  # noqa: E402

from s3_server import S3Server, start as start_s3

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = REPO / "tests" / "fixtures" / "clipvg_official" / "tiny"


@pytest.fixture(scope="session")
def official_cases() -> dict:
    """``cases.pt`` of the committed official ``tiny`` fixture (inputs, boxes, losses, raw images)."""
    path = OFFICIAL_TINY / "cases.pt"
    assert path.exists(), f"the committed official fixture is missing: {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """moto's S3 server on 127.0.0.1 (free port) with a bucket; stopped after the session.

    The dummy AWS variables (and ``AWS_ENDPOINT_URL``) are set in this process for the whole
    session, so boto-based clients and Ray workers started afterwards reach only this server.
    """
    saved = {}

    def setenv(key, value):
        saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    handle, server = start_s3(setenv)
    setenv("AWS_ENDPOINT_URL", handle.endpoint_url)
    try:
        yield handle
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
