"""A real Ctrl-C (SIGINT) sent to a running ``clipvg train-local`` process: once mid-epoch,
once while ``last/`` is being written; each ends with exit 130 and one line saying what was
kept, ``last/`` loads, and ``train.resume=true`` trains to the end.

The child is ``clipvg.cli.main`` behind a few lines of test scaffolding (``DRIVER``): every
training step and the checkpoint's weights write are slowed down and announced by marker
files, so the test knows where the process is when it presses Ctrl-C (no sleeps in the test
guessing it). The child gets SIGINT's default handling back (platform notes, "Signals in
tests"). Three processes in all (~25 s each, mostly importing open_clip)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from clipvg.config import load_config
from clipvg.engine.checkpoint import STATE_FILE, load_training_state
from clipvg.engine.local import train_local
from clipvg.engine.loop import build_training
from tiny_train import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 240  # per wait: start-up (open_clip, the synthetic world) under load

# argv: MARKERS SLOW_SAVE clipvg-args... ; SLOW_SAVE = k: the k-th checkpoint write of this
# process pauses (3 s) after the weights are written and before state.json (0: none)
DRIVER = r"""
import sys, time
from pathlib import Path
from clipvg.engine import checkpoint, local
from clipvg.cli import main

markers, slow_save, saves = Path(sys.argv[1]), int(sys.argv[2]), []
step, export = local.train_step, checkpoint.export_model

def announced_step(*args, **kwargs):
    out = step(*args, **kwargs)
    (markers / f"step-{len(list(markers.glob('step-*'))) + 1}").touch()
    time.sleep(0.5)
    return out

def slow_export(model, folder):
    out = export(model, folder)
    saves.append(folder)
    if len(saves) == slow_save:
        (markers / "saving").touch()
        time.sleep(3)
    return out

local.train_step, checkpoint.export_model = announced_step, slow_export
sys.exit(main(["train-local", *sys.argv[3:]]))
"""


def _start(tmp_path: Path, name: str, slow_save: int, *overrides: str) -> tuple[subprocess.Popen, Path]:
    markers = tmp_path / f"markers-{name}"
    markers.mkdir()
    args = [*TINY_TRAIN, f"storage.root={tmp_path}", "storage.run_name=sig",
            "train.max_steps_per_epoch=3", *overrides]
    # one torch thread, as this process (tests/conftest.py): the same float sums on both sides
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(markers), str(slow_save), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, markers


def _wait_for(proc: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"train-local ended (rc {proc.returncode}) before the moment to interrupt:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no moment to interrupt within {DEADLINE_S} s")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"train-local still running {DEADLINE_S} s after Ctrl-C")
    return proc.returncode, err


def _interrupt_line(err: str) -> str:
    """The command's own line (the rest of stderr is its INFO log): exactly one, last, no
    traceback."""
    ours = [line for line in err.splitlines() if line.startswith("clipvg train-local:")]
    assert len(ours) == 1 and err.rstrip().endswith(ours[0]), err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    return ours[0]


def _last_epoch(run: Path) -> int:
    """The epoch of ``last/``, after loading it whole into a model and optimizer of the run's
    config (a partial or mismatched folder raises CheckpointError)."""
    cfg = load_config(run / "config.yaml")
    model, optimizer = build_training(cfg)
    return load_training_state(run / "last", model, optimizer, schedule=cfg.train.schedule).epoch


def _signal_in_epoch_2(tmp_path: Path, name: str, sig: int) -> tuple[int, str, str]:
    """A 3-epoch run sent ``sig`` during the 2nd step of epoch 2 (steps 1-3 were epoch 1):
    its exit status, its one line, and its stderr."""
    proc, markers = _start(tmp_path, name, 0, "train.epochs=3")
    _wait_for(proc, lambda: (markers / "step-5").exists())
    proc.send_signal(sig)
    rc, err = _finish(proc)
    return rc, _interrupt_line(err), err


def test_ctrl_c_mid_epoch_and_during_a_checkpoint_write_then_resume(tmp_path):
    """Planted defects that fail it: (1) ``held_interrupts`` removed from the local loop's
    checkpoint block (the second Ctrl-C leaves last/ with new weights and no state.json: not
    loadable, resume refused); (2) the CLI's KeyboardInterrupt/InterruptedRun handling removed
    (exit 1 with a traceback instead of 130 and one line)."""
    run = tmp_path / "sig"
    # 1. mid-epoch: Ctrl-C during the 2nd step of epoch 2
    rc, line, err = _signal_in_epoch_2(tmp_path, "a", signal.SIGINT)
    assert rc == 130, err[-3000:]
    assert "at epoch 2 step" in line and "last/ from epoch 1" in line and "train.resume=true" in line, line
    assert _last_epoch(run) == 1 and not (run / "history.json").exists()

    # 2. resumed; Ctrl-C while epoch 2's checkpoint is being written (weights there, state.json not)
    proc, markers = _start(tmp_path, "b", 1, "train.epochs=3", "train.resume=true")
    _wait_for(proc, lambda: (markers / "saving").exists())
    proc.send_signal(signal.SIGINT)
    rc, err = _finish(proc)
    line = _interrupt_line(err)
    assert rc == 130, err[-3000:]
    kept = _last_epoch(run)  # whole: the previous checkpoint or the new one, never a mix
    assert kept in (1, 2) and f"last/ from epoch {kept}" in line, line
    assert (run / "last" / STATE_FILE).is_file()

    # 3. resumed again: trains to the end
    proc, _ = _start(tmp_path, "c", 0, "train.epochs=3", "train.resume=true")
    rc, err = _finish(proc)
    assert rc == 0, err[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3] and _last_epoch(run) == 3


def test_sigterm_keeps_what_ctrl_c_keeps_and_the_resumed_run_is_the_uninterrupted_one(tmp_path):
    """SIGTERM (what Kubernetes and cloud autoscalers send on preemption and scale-down) sent
    mid-epoch to a running train-local: exit 143 and one line saying what was kept, as for
    Ctrl-C; train.resume=true then ends with the weights and history of an uninterrupted run.
    Planted: without ``sigterm_as_interrupt`` in the CLI the process dies silently (rc -15,
    no line); without SIGTERM in ``held_interrupts`` a SIGTERM during a checkpoint write
    leaves a half-written last/."""
    run = tmp_path / "sig"
    rc, line, err = _signal_in_epoch_2(tmp_path, "t", signal.SIGTERM)
    assert rc == 143, err[-3000:]
    assert "terminated (SIGTERM) at epoch 2 step" in line and "last/ from epoch 1" in line, line
    assert _last_epoch(run) == 1

    fast = [*TINY_TRAIN, "train.max_steps_per_epoch=3", "train.epochs=3", f"storage.root={tmp_path}"]
    resumed = train_local(load_config(None, [*fast, "storage.run_name=sig", "train.resume=true"]), progress=False)
    whole = train_local(load_config(None, [*fast, "storage.run_name=whole"]), progress=False)
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in whole.epochs]
    assert resumed.best_epoch == whole.best_epoch
    got, want = load_file(str(run / "last" / "model.safetensors")), load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    assert got.keys() == want.keys()
    worst = max(float((got[k].float() - want[k].float()).abs().max()) for k in want)
    assert worst == 0, f"resumed weights differ from the uninterrupted run's by up to {worst}"
