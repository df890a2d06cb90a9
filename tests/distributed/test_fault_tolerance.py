"""A node lost mid-run: Ray Train restarts the worker group from the last checkpoint and the
run finishes with every epoch reported once and the result of an uninterrupted run.

The scenario runs in a subprocess (tests/distributed/fault_run.py) because it needs a Ray
cluster of its own: a head and two worker nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``).
The run is the golden run of tests/golden/ (same config and seed), so the uninterrupted run to
compare with is the committed golden curve and its held-out accuracy.
"""

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clipvg.engine.run_log import read_metrics
from tiny_train import GOLDEN, GOLDEN_RUN

HERE = Path(__file__).parent


@pytest.mark.slow
def test_node_killed_in_epoch_2_resumes_from_checkpoint(tiny_world, tmp_path):
    out = tmp_path / "report.json"
    # a short private temp dir (Ray's socket paths must stay under 107 bytes). Ray resolves a
    # 127.0.0.1 address to the host's IP, where these loopback nodes do not listen; with
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 its node-IP detection answers 127.0.0.1 as well.
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="clipvg-ray-"),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([sys.executable, str(HERE / "fault_run.py"), str(out), str(tmp_path / "runs"),
                           *GOLDEN_RUN, f"data.uri={tiny_world}", "train.max_failures=2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report.get("killed"), "no node hosted the training worker"
    assert report["at_kill"] == ["checkpoint_epoch0001"], "the node was not lost during epoch 2"
    assert "resuming from" in proc.stdout + proc.stderr

    run = report["history"]
    assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
    records = read_metrics(str(tmp_path / "runs" / "golden"))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 37)), "a step is missing or logged twice"
    # Restarted from epoch 1's checkpoint with the same (seed, epoch) data, the run retraces
    # the uninterrupted golden run step by step (a restart from scratch, a lost optimizer
    # state or a different data order would not) and ends with its held-out accuracy.
    golden = json.loads(GOLDEN.read_text())
    for step, (r, want) in enumerate(zip(steps, golden["loss"]), 1):
        assert r["loss"] == pytest.approx(want, rel=2e-3, abs=1e-4), f"step {step}"
    got, want, n = run["test"]["test"]["acc"], golden["test_acc"], run["test"]["test"]["total"]
    assert abs(got - want) <= 3 * math.sqrt(max(want * (1 - want), 0.05) / n)
