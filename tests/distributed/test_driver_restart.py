"""Killing the driver-side command (``clipvg train``) and running it again continues the run
from its last checkpoint: no epoch is trained or reported twice."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil

from clipvg.data import storage
from clipvg.engine.run_log import read_metrics
from tiny_train import TINY_TRAIN


def clipvg_train(tmp_path, world, ray_dir, **popen):
    overrides = [o for o in TINY_TRAIN if not o.startswith("train.epochs")]
    args = [sys.executable, "-m", "clipvg.cli", "train", "--num-cpus", "2", *overrides,
            f"data.uri={world}", f"storage.root={tmp_path / 'runs'}", "storage.run_name=killed",
            "train.epochs=3"]
    # a private Ray temp dir: a killed head must not be found by later ray.init calls
    env = dict(os.environ, RAY_TMPDIR=ray_dir)
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def kill_everything_of(proc: subprocess.Popen, temp_dir) -> None:
    """SIGKILL the command's process group and every Ray process of its private temp dir."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had finished, and its group with it
        pass
    proc.wait(timeout=30)
    for p in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(p.info["cmdline"] or []):
            p.kill()


@pytest.mark.slow
def test_killed_driver_rerun_resumes_from_last_checkpoint(tiny_world, tmp_path):
    ray_dir = tempfile.mkdtemp(prefix="clipvg-ray-")  # short: socket paths stay < 107 bytes
    run_dir = tmp_path / "runs" / "killed"
    first = clipvg_train(tmp_path, tiny_world, ray_dir)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint_epoch0001" / "state.json").exists():
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    kill_everything_of(first, ray_dir)
    assert not (run_dir / "checkpoint_epoch0003").exists()

    second = clipvg_train(tmp_path, tiny_world, ray_dir)
    out, _ = second.communicate(timeout=400)
    kill_everything_of(second, ray_dir)
    assert second.returncode == 0, out[-4000:]
    assert "continuing run" in out and "resuming from" in out
    history = storage.read_json(str(run_dir / "history.json"))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    epochs = [r["epoch"] for r in read_metrics(str(run_dir)) if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    assert "held-out test Acc@0.5" in out
