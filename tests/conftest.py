"""Suite-wide fixtures, and how ``make test`` splits the suite between two pytest-xdist workers
(:func:`pytest_xdist_make_scheduler`).

Torch runs single-threaded in tests: the models are tiny, the machine has 2 cores, and torch's
OpenMP threads then spend more time waiting on each other than computing (measured: the model
tests took 40-50 s with 2 threads under load, 10 s with 1).
"""

import os
import secrets
import shutil
import tempfile
from pathlib import Path

# Token authentication stays on in every Ray test, as on a cluster. Ray reads its auth mode
# when it is first imported, which any test module may do at collection (tests/cluster/ does,
# before tests/distributed/), so it is set here, at the import of the first conftest.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

import pytest  # noqa: E402
import torch  # noqa: E402

from s3_server import S3Server, start as start_s3
from storage_trap import Trap

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The test folders whose tests share the session's Ray (``ray_local``) or its clusters: one
# xdist worker runs them all (pytest_xdist_make_scheduler).
RAY_TEST_FOLDERS = ("tests/distributed/", "tests/bench/")
OFFICIAL_TINY = REPO / "tests" / "fixtures" / "clipvg_official" / "tiny"


def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs two pytest-xdist workers: every test of tests/distributed/ and
    tests/bench/ in one of them, in file order (they share the session's Ray instance, heads and
    clusters, and two in-process Rays would collide on Ray's fixed ports), every other test
    wherever a worker is free. (xdist's own ``--dist loadgroup`` marks do not take with pytest 9.2: xdist 3.8 renames
    the items through a ``_nodeid`` attribute that pytest no longer reads.)

    Measured: running the node-loss tests (whose cluster is a subprocess of its own) in the
    other worker saved nothing: on two cores the pipeline job beside them took 200 s longer."""
    from xdist.scheduler import LoadScopeScheduling

    class RayTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if nodeid.startswith(RAY_TEST_FOLDERS) else nodeid

    return RayTestsTogether(config, log)


@pytest.fixture(scope="session")
def short_tmp():
    """A private folder directly under the system temp dir, removed after the session: Ray's
    socket paths (``<temp>/session_<date>_<pid>/sockets/plasma_store``) must stay under 107
    bytes, which pytest's per-worker temp paths exceed."""
    path = Path(tempfile.mkdtemp(prefix="clipvg-t-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def official_cases() -> dict:
    """``cases.pt`` of the committed official ``tiny`` fixture (inputs, boxes, losses, raw images)."""
    path = OFFICIAL_TINY / "cases.pt"
    assert path.exists(), f"the committed official fixture is missing: {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def s3() -> S3Server:
    """moto's S3 server on 127.0.0.1 (free port) with a bucket; stopped after the session.

    Only code that is *given* the endpoint reaches it: ``AWS_ENDPOINT_URL`` - where every S3
    client goes when it is not given one - points at a trap for the whole session
    (``s3.trap``, tests/storage_trap.py), in this process and in every Ray started after this
    fixture (``ray_local``, the ``ray start`` heads and clusters, the jobs they run). So a
    driver, Ray Data task, Train worker or Tune trial that drops ``storage.endpoint_url`` fails
    its test (``no_default_endpoint``) instead of reaching moto through the environment.
    """
    saved = {}

    def setenv(key, value):
        saved.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    handle, server = start_s3(setenv)
    handle.trap = Trap()
    setenv("AWS_ENDPOINT_URL", handle.trap.url)
    global _SESSION_TRAP
    _SESSION_TRAP = handle.trap
    try:
        yield handle
    finally:
        _SESSION_TRAP = None
        handle.trap.close()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_SESSION_TRAP: Trap | None = None  # the s3 fixture's trap, once a test has started it


@pytest.fixture(autouse=True)
def no_default_endpoint():
    """Every test fails when something - this process, a Ray worker, a job - connected to the
    session's ``AWS_ENDPOINT_URL`` trap while it ran: that client ignored ``storage.endpoint_url``.
    (Connections that a lingering Ray worker makes later are charged to the test then running:
    still a failure, and its message says where to look.)"""
    before = _SESSION_TRAP.connections if _SESSION_TRAP is not None else 0
    yield
    if _SESSION_TRAP is not None and _SESSION_TRAP.connections > before:
        pytest.fail(f"{_SESSION_TRAP.connections - before} connection(s) to AWS_ENDPOINT_URL "
                    f"({_SESSION_TRAP.url}, a trap): an S3 client in this process or a Ray worker "
                    "ignored storage.endpoint_url / --endpoint-url", pytrace=False)


@pytest.fixture(scope="session")
def ray_local(s3, short_tmp):
    """The session's one local Ray (start-up costs seconds), for tests/distributed/ and
    tests/bench/; started after ``s3``, so its workers inherit the trap as ``AWS_ENDPOINT_URL``
    and reach moto only through the endpoint they are given."""
    import ray

    temp = short_tmp / "ray"
    # the dashboard: Tune runs of nested TorchTrainers hang without it (docs/platform notes)
    ray.init(address="local", num_cpus=2, include_dashboard=True, _node_ip_address="127.0.0.1",
             _temp_dir=str(temp), configure_logging=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    try:
        yield ray
    finally:
        ray.shutdown()
