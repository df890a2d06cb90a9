"""Ray Train: checkpoints on storage, best + latest kept, metrics, the golden loss curve.

The run checked here is the golden run of tests/golden/ as the ``golden_run_with_node_loss``
fixture runs it (tests/distributed/conftest.py): its worker's node is removed during epoch 2,
so every check below also holds after a restart (test_fault_tolerance.py checks the restart
itself). Two DDP workers with checkpoints on S3, resuming after a killed driver, are tested
with a real job (test_job_submit.py)."""

import json
import os

import pytest

from clipvg.config import ConfigError, load_config
from clipvg.data import storage
from clipvg.distributed import trainer
from clipvg.engine.checkpoint import read_state
from clipvg.engine.run_log import read_metrics
from clipvg.model import load_model
from tiny_train import GOLDEN, GOLDEN_RUN, TINY_TRAIN


def tiny(root, world, *extra):
    return load_config(None, [*TINY_TRAIN, f"storage.root={root}", f"data.uri={world}", *extra])


def split_size(world, split):
    import pyarrow.compute as pc

    return storage.read_table(f"{world}/samples", filter=pc.field("split") == split).num_rows


def checkpoints(run_dir, **options):
    fs, path = storage.filesystem(run_dir, **options)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if "checkpoint_epoch" in p)


@pytest.fixture(scope="module")
def one_worker(golden_run_with_node_loss):
    """The 3-epoch, 1-worker, fixed-seed golden run: its history and run folder."""
    report, run_dir, _ = golden_run_with_node_loss
    return report["history"], run_dir


def test_loss_curve_matches_the_golden_curve(one_worker):
    """Per-step training loss of the fixed-seed run against tests/golden/ (regenerate with
    CLIPVG_UPDATE_GOLDEN=1 after an intended numerics change, and say why in the commit).

    The tolerance allows for float reordering between machines (thread counts, SIMD width)
    over 150 steps. A change of loss, schedule, optimizer, data order or augmentation changes
    the first steps' losses outright."""
    history, run_dir = one_worker
    losses = [r["loss"] for r in read_metrics(str(run_dir)) if r["kind"] == "step"]
    if os.environ.get("CLIPVG_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"overrides": GOLDEN_RUN, "loss": losses,
                                      "test_acc": history["test"]["test"]["acc"]}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["overrides"] == GOLDEN_RUN, "the golden run's config changed: regenerate"
    assert len(losses) == len(golden["loss"])
    for step, (got, want) in enumerate(zip(losses, golden["loss"]), 1):
        assert got == pytest.approx(want, rel=2e-3, abs=1e-4), f"step {step}: loss {got} vs golden {want}"


def test_one_worker_writes_checkpoints_metrics_and_best_model(one_worker, learning_world):
    history, run_dir = one_worker
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert history["world_size"] == 1
    best = history["best_epoch"]
    kept = checkpoints(str(run_dir))
    # the best (by val accuracy) and the latest survive; the rest are deleted
    assert kept == sorted({f"checkpoint_epoch{best:04d}", "checkpoint_epoch0003"})
    assert all((run_dir / name / "COMPLETE").exists() for name in kept), "a kept checkpoint is unmarked"
    state = read_state(run_dir / "checkpoint_epoch0003")
    assert state.epoch == 3 and state.best_epoch == best and len(state.history) == 3
    assert state.data_position["epoch"] == 3
    model = load_model(run_dir / "best")  # an exported model folder
    assert sum(p.numel() for p in model.parameters()) > 0
    assert history["test"]["test"]["total"] == split_size(learning_world, "test")
    assert all(e["val"]["total"] == split_size(learning_world, "val") for e in history["epochs"])
    records = read_metrics(str(run_dir))
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(r["lr"] > 0 and r["samples_per_s"] > 0 for r in steps)
    assert any(name.startswith("events") for name in os.listdir(run_dir / "tensorboard"))


def test_resume_without_a_checkpoint_is_an_error(tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        trainer.train(tiny(tmp_path, tiny_world, "storage.run_name=none", "train.resume=true"))


def test_every_worker_asks_for_the_model_resources(tmp_path):
    """scaling.model_resources goes on every Ray Train worker (a cluster places them on the node
    type that advertises it: cluster/*.yaml, docs/cluster.md)."""
    cfg = load_config(None, [*TINY_TRAIN, f"storage.root={tmp_path}", "scaling.num_workers=2",
                             "scaling.model_resources={clipvg_model: 1}"])
    scaling = trainer.build_trainer(cfg, plans={}).scaling_config
    assert scaling.num_workers == 2
    assert scaling.resources_per_worker == {"clipvg_model": 1, "CPU": 0.5}
