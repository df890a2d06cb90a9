"""One local Ray instance for every Ray test of the session (start-up costs seconds).

Token authentication stays on, as on a cluster: a random token is set in the environment of
this process before Ray starts, so the head and every worker use it and no file under ~/.ray is
read or written. The head binds to 127.0.0.1 and keeps its files in a private temp dir. The
``s3`` fixture starts first, so Ray's workers inherit the loopback S3 endpoint and the dummy
credentials.
"""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from tiny_train import TINY_TRAIN  # tests/tiny_train.py

# RAY_AUTH_MODE=token and the session's RAY_AUTH_TOKEN are set by tests/conftest.py, before
# any test module imports Ray.


@pytest.fixture(scope="session")
def ray_local(s3, tmp_path_factory):
    import ray

    temp = tmp_path_factory.mktemp("ray")
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


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """One synthetic world for every training test of the session (data.uri=...)."""
    from clipvg.config import load_config
    from clipvg.data.batching import ensure_dataset

    root = tmp_path_factory.mktemp("tiny-world")
    return ensure_dataset(load_config(None, [*TINY_TRAIN, f"storage.root={root}"]))


# ------------------------------------------------------------------------------------------
# A real Ray head for `ray job submit` tests (test_job_submit.py, test_pipeline.py); the
# helpers (wait, TERMINAL, JOB_TIMEOUT_S, REPO) are in ray_head.py, importable as
# clipvg_tests_ray_head; the fake multi-node cluster of test_cluster_rehearsal.py is in
# fake_cluster.py, importable as clipvg_tests_fake_cluster
# ------------------------------------------------------------------------------------------

def _load_helper(name: str, file: str):
    """Import tests/distributed/<file> as module ``name`` (this folder is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ray_head = _load_helper("clipvg_tests_ray_head", "ray_head.py")
_load_helper("clipvg_tests_fake_cluster", "fake_cluster.py")


@pytest.fixture(scope="session")
def head(s3, tmp_path_factory):
    """A Ray head of its own (2 CPUs, free ports, private temp dir), stopped by pid; shared by
    the job tests of the session (starting one costs seconds)."""
    h = ray_head.RayHead(tmp_path_factory.mktemp("rh"), num_cpus=2)
    h.start()
    print(f"\nray head up in {h.start_s:.1f} s at {h.dashboard_url} ({len(h.pids)} processes, "
          f"{len(h.attempt_logs) + 1} attempt(s))")
    try:
        yield h
    finally:
        h.stop()
        print(f"\nray head stopped in {h.stop_s:.1f} s")
        assert h.alive() == [], f"processes of the head survived: {h.alive()}"


@pytest.fixture(scope="session")
def client(head):
    from ray.job_submission import JobSubmissionClient

    # No headers given: the client authenticates with RAY_AUTH_TOKEN from the environment.
    return JobSubmissionClient(head.dashboard_url)
