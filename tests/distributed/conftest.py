"""The Ray clusters, heads and runs shared by tests/distributed/ (the session's one local Ray,
``ray_local``, is in tests/conftest.py: tests/bench/ uses it too).

Token authentication stays on, as on a cluster: a random token is set in the environment of
this process before Ray starts, so the head and every worker use it and no file under ~/.ray is
read or written. The head binds to 127.0.0.1 and keeps its files in a private temp dir. The
``s3`` fixture starts first, so Ray's workers inherit the loopback S3 endpoint and the dummy
credentials.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny_train import GOLDEN_RUN, LEARNING_TRAIN, TINY_TRAIN  # tests/tiny_train.py

# RAY_AUTH_MODE=token and the session's RAY_AUTH_TOKEN are set by tests/conftest.py, before
# any test module imports Ray.


@pytest.fixture(scope="session")
def golden_run_with_node_loss(learning_world, tmp_path_factory, short_tmp):
    """The golden run of tests/golden/ (fixed seed, 3 epochs, 1 worker) on a cluster of its own
    (a head and two worker nodes on 127.0.0.1, in a subprocess: fault_run.py) whose worker's
    node is removed during epoch 2. Ray Train restarts the worker on the other node from
    epoch 1's checkpoint, so the run's outputs are those of an uninterrupted run (what
    test_trainer.py checks) and its losses the golden curve's (test_fault_tolerance.py).
    With CLIPVG_UPDATE_GOLDEN=1 no node is removed (the run that regenerates the golden).

    Returns ``(report, run_dir, output)``: fault_run.py's report, the run folder, and the
    subprocess's stdout + stderr."""
    tmp = tmp_path_factory.mktemp("node-loss")
    out = tmp / "report.json"
    # Ray resolves a 127.0.0.1 address to the host's IP, where these loopback nodes do not
    # listen; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 its node-IP detection answers 127.0.0.1.
    (short_tmp / "nl").mkdir()
    env = dict(os.environ, RAY_TMPDIR=str(short_tmp / "nl"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    if os.environ.get("CLIPVG_UPDATE_GOLDEN"):
        env["CLIPVG_NO_NODE_LOSS"] = "1"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fault_run.py")), str(out),
                           str(tmp / "runs"), *GOLDEN_RUN, f"data.uri={learning_world}", "train.max_failures=2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text()), tmp / "runs" / "golden", proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def learning_world(tmp_path_factory):
    """The world of the golden run (LEARNING_TRAIN: 112 px, 2-3 objects; data.uri=...)."""
    from clipvg.config import load_config
    from clipvg.engine.batching import ensure_dataset

    root = tmp_path_factory.mktemp("learning-world")
    return ensure_dataset(load_config(None, [*LEARNING_TRAIN, f"storage.root={root}"]))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """One synthetic world for every training test of the session (data.uri=...)."""
    from clipvg.config import load_config
    from clipvg.engine.batching import ensure_dataset

    root = tmp_path_factory.mktemp("tiny-world")
    return ensure_dataset(load_config(None, [*TINY_TRAIN, f"storage.root={root}"]))


# ------------------------------------------------------------------------------------------
# A real Ray head for `ray job submit` tests (test_job_submit.py); the helpers (wait,
# TERMINAL, JOB_TIMEOUT_S, REPO) are in ray_head.py, importable as clipvg_tests_ray_head; the
# static and autoscaling clusters of cluster/aws.yaml are in fake_cluster.py
# (clipvg_tests_fake_cluster), and the pipeline run across them in cluster_pipeline.py
# (clipvg_tests_cluster_pipeline)
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
cluster_pipeline = _load_helper("clipvg_tests_cluster_pipeline", "cluster_pipeline.py")


@pytest.fixture(scope="session")
def pipeline_on_clusters(s3, short_tmp):
    """The tiny pipeline: stopped on a static cluster, finished on an autoscaling one (see
    cluster_pipeline.py); shared by test_pipeline.py and test_cluster_rehearsal.py."""
    return cluster_pipeline.run(short_tmp / "cl", s3)


@pytest.fixture(scope="session")
def head(s3, short_tmp):
    """A Ray head of its own (2 CPUs, free ports, private temp dir), stopped by pid; shared by
    the job tests of the session (starting one costs seconds)."""
    h = ray_head.RayHead(short_tmp / "rh", num_cpus=2)
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
