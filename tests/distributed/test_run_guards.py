"""``clipvg train`` and ``clipvg pipeline`` before their first step: storage only where told,
results never replaced unasked, requests that cannot fit refused at once, Ctrl-C in one line.

No TorchTrainer runs here (each costs a minute on 2 cores): the trainer's ``fit`` is replaced
where a test needs the run to stop. What the workers do with the storage options shipped to
them is exercised by the Ray Train runs of test_trainer.py / test_job_submit.py (on S3).
"""

import os
import threading

import pytest

from clipvg.config import load_config
from clipvg.data import storage
from clipvg.distributed import pipeline as pipeline_mod
from clipvg.distributed import trainer
from clipvg.errors import InterruptedRun, Terminated, UserError
from interrupts import interrupted
from storage_trap import keys, mangled_paths, trap
from tiny_train import TINY_TRAIN


def tiny(root, *extra):
    return load_config(None, [*TINY_TRAIN, f"storage.root={root}", "storage.run_name=r", *extra])


class Stopped:
    """A trainer whose ``fit`` is Ctrl-C."""

    def fit(self):
        raise KeyboardInterrupt


# ------------------------------------------------------------------------------ train: storage
def test_train_on_s3_reads_and_writes_only_the_bucket(ray_local, s3, tmp_path, monkeypatch):
    """storage.root=s3://... with the endpoint in storage.endpoint_url only: the world goes to the
    bucket, the splits are planned from it, Ray Train's storage and the workers' options name
    that endpoint, and nothing else is contacted (AWS_ENDPOINT_URL is a trap). Ctrl-C during
    fit() ends with one line: nothing was kept yet."""
    monkeypatch.chdir(tmp_path)
    root, built = s3.uri("train"), {}

    def build(cfg, plans, callbacks=None):
        built["trainer"] = real_build(cfg, plans, callbacks)
        return Stopped()

    real_build = trainer.build_trainer
    monkeypatch.setattr(trainer, "build_trainer", build)
    with trap(monkeypatch) as t:
        message = interrupted(trainer.train, tiny(root, f"storage.endpoint_url={s3.endpoint_url}"))
    assert message == (f"interrupted; kept: nothing to resume in {root}/r (no epoch finished; "
                               f"a rerun starts over)")
    assert t.connections == 0
    assert any(k.endswith("manifest.json") for k in keys(s3, f"{root}/worlds"))
    run = built["trainer"]
    fs = run.run_config.storage_filesystem
    assert fs.__reduce__()[1][0]["endpoint_override"] == s3.endpoint_url.removeprefix("http://")
    assert run.train_loop_config["job"].storage_options == {"endpoint_url": s3.endpoint_url}
    assert run.train_loop_config["job"].cfg.data.uri.startswith(f"{root}/worlds/")
    assert os.listdir(tmp_path) == [] and mangled_paths(tmp_path) == []


def test_train_with_a_wrong_endpoint_fails_at_once_naming_it(s3, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with trap(monkeypatch) as t:
        with pytest.raises(UserError, match=r"S3 endpoint http://127.0.0.1:9 "):
            trainer.train(tiny(s3.uri("wrong"), "storage.endpoint_url=http://127.0.0.1:9"))
    assert t.connections == 0 and os.listdir(tmp_path) == []


def test_a_finished_run_keeps_only_its_best_and_latest_checkpoints(tmp_path):
    """What Ray Train's manager could not prune - checkpoints written before a lost node
    restarted it - goes once the run has finished; an unfinished upload is not touched."""
    run_dir = str(tmp_path / "r")
    for epoch in (1, 2, 3, 4):
        storage.write_bytes(b"", f"{run_dir}/checkpoint_epoch{epoch:04d}/COMPLETE")
    os.makedirs(f"{run_dir}/checkpoint_epoch0005")  # not complete
    assert trainer.prune_checkpoints(run_dir, best_epoch=2) == ["checkpoint_epoch0001", "checkpoint_epoch0003"]
    assert sorted(os.listdir(run_dir)) == ["checkpoint_epoch0002", "checkpoint_epoch0004", "checkpoint_epoch0005"]
    assert trainer.prune_checkpoints(run_dir, best_epoch=4) == ["checkpoint_epoch0002"]


def test_ctrl_c_names_the_checkpoint_that_was_kept(tmp_path):
    cfg = trainer.absolute_root(tiny(tmp_path, "train.epochs=3"))
    for epoch in (1, 2):
        storage.write_bytes(b"", f"{cfg.run_dir}/checkpoint_epoch{epoch:04d}/COMPLETE")
    os.makedirs(f"{cfg.run_dir}/checkpoint_epoch0003")  # not complete: its upload was cut
    assert trainer._interrupted(cfg) == (f"interrupted during epoch 3 of 3; kept: {cfg.run_dir} "
                                         f"checkpoint_epoch0002 from epoch 2 (rerun the same command "
                                         f"to continue from it)")


# ------------------------------------------------------------------------------ train: overwrite
def test_train_refuses_results_it_cannot_continue_unless_overwrite(tiny_world, tmp_path):
    """A train-local run under the same name (best/, last/, history.json, no Ray Train
    checkpoint) was replaced by a fresh Ray Train run; now it is refused, and --overwrite
    removes it."""
    cfg = tiny(tmp_path, f"data.uri={tiny_world}")
    for name in ("history.json", "last/model.safetensors", "best/model.safetensors"):
        storage.write_bytes(b"x", storage.join(str(tmp_path / "r"), name))
    with pytest.raises(UserError) as refused:
        trainer.train(cfg)
    assert "storage.run_name" in str(refused.value) and "--overwrite" in str(refused.value)
    assert (tmp_path / "r" / "best" / "model.safetensors").read_bytes() == b"x"
    with pytest.raises(UserError, match="give one"):
        trainer.prepare_run(trainer.absolute_root(tiny(tmp_path, "train.resume=true")), overwrite=True)
    assert trainer.prepare_run(trainer.absolute_root(cfg), overwrite=True) is None
    assert not (tmp_path / "r").exists()
    inside = tiny(tmp_path, f"data.uri={tmp_path}/r/world")
    with pytest.raises(UserError, match="holds the dataset"):
        trainer.prepare_run(trainer.absolute_root(inside), overwrite=True)


# ------------------------------------------------------------------------------ train: resources
def test_requests_that_cannot_fit_the_cluster_fail_fast(ray_local, tiny_world, tmp_path):
    """The README's `clipvg train --config configs/demo.yaml scaling.num_workers=2` on 2 CPUs:
    2 x 0.9 CPU of workers leave the 0.5-CPU decode tasks no room, and the run waited forever.
    Now train() refuses it at once, saying what was asked and what is there."""
    cfg = tiny(tmp_path, f"data.uri={tiny_world}", "scaling.num_workers=2",
               "scaling.cpus_per_worker=0.9", "scaling.data_cpus=0.5")
    outcome = {}

    def attempt():
        try:
            trainer.train(cfg)
        except Exception as e:  # noqa: BLE001 - the test looks at what it is
            outcome["error"] = e

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "train() is waiting for resources instead of refusing"
    error = outcome.get("error")
    assert isinstance(error, UserError), error
    assert ("asks for 2.3 CPU (2 worker(s) x 0.9 CPU + 0.5 CPU for a Ray Data decode task) but the "
            "cluster has 2 CPU") in str(error)
    assert not (tmp_path / "r").exists()

    trainer.check_resources(tiny(tmp_path, "scaling.num_workers=2"))  # 2 x 0.5 + 0.5: fits
    with pytest.raises(UserError, match=r"1 GPU \(1 worker\(s\) x 1 GPU\) but the cluster has 0 GPU"):
        trainer.check_resources(tiny(tmp_path, "scaling.use_gpu=true"))
    with pytest.raises(UserError, match=r"1 clipvg_model .* but the cluster has 0 clipvg_model"):
        trainer.check_resources(tiny(tmp_path, "scaling.model_resources={clipvg_model: 1}"))


def test_autoscaling_clusters_are_not_refused(ray_local, tmp_path, monkeypatch):
    big = tiny(tmp_path, "scaling.num_workers=4", "scaling.use_gpu=true")
    monkeypatch.setattr(trainer, "cluster_capacity", lambda: (None, True))  # v1: maximum unknown
    trainer.check_resources(big)
    monkeypatch.setattr(trainer, "cluster_capacity", lambda: ({"CPU": 64, "GPU": 8}, True))
    trainer.check_resources(big)  # within what Ray says the cluster can scale to
    monkeypatch.setattr(trainer, "cluster_capacity", lambda: ({"CPU": 64, "GPU": 2}, True))
    with pytest.raises(UserError, match="but the cluster can scale to 2 GPU"):
        trainer.check_resources(big)


def test_the_v1_autoscaler_status_tells_fixed_from_autoscaling_clusters():
    """Status reports as Ray 2.60 writes them (seen on `ray start --head` and on the
    fake_multinode cluster of tests/distributed/fake_cluster.py): the read-only autoscaler of a
    fixed cluster names nodes node_<id>; an autoscaling config names its node types."""
    fixed = {"autoscaler_report": {"active_nodes": {"node_6b2f8dce77324c2186c3f10778151263421bfdcf": 1},
                                   "idle_nodes": None, "pending_nodes": [], "pending_launches": {}}}
    scaling = {"autoscaler_report": {"active_nodes": {"ray.head.default": 1}, "idle_nodes": None,
                                     "pending_nodes": [], "pending_launches": {}}}
    launching = {"autoscaler_report": {"active_nodes": {}, "pending_launches": {"gpu_worker": 1}}}
    assert not trainer.autoscaler_can_launch(fixed) and not trainer.autoscaler_can_launch(None)
    assert trainer.autoscaler_can_launch(scaling) and trainer.autoscaler_can_launch(launching)
    assert not trainer.autoscaler_can_launch({"load_metrics_report": {}})  # no autoscaler report


# ------------------------------------------------------------------------------ pipeline
PIPE = ["curriculum.sources=[template]", "curriculum.launcher=in_trial"]


def test_pipeline_on_s3_writes_only_to_the_bucket(ray_local, s3, tmp_path, monkeypatch):
    """The world and the pseudo-label stage (Ray Data tasks) with storage.endpoint_url only."""
    monkeypatch.chdir(tmp_path)
    root = s3.uri("pipe")
    cfg = tiny(root, *PIPE, f"storage.endpoint_url={s3.endpoint_url}")
    with trap(monkeypatch) as t:
        out = pipeline_mod.Pipeline(cfg, until="pseudo:template").run()
    assert out == {"stopped_after": "pseudo:template"}
    assert t.connections == 0
    found = keys(s3, f"{root}/r")
    assert {"stages/world.json", "stages/pseudo-template.json"} <= set(found)
    assert any(k.startswith("pseudo/template/") and k.endswith(".parquet") for k in found)
    assert any(k.endswith("manifest.json") for k in keys(s3, f"{root}/worlds"))
    assert os.listdir(tmp_path) == [] and mangled_paths(tmp_path) == []


def test_pipeline_refuses_to_replace_stages_finished_with_other_settings(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, *PIPE)
    pipeline_mod.Pipeline(cfg, until="world").run()
    manifest = tmp_path / "r" / "stages" / "world.json"
    before = manifest.read_text()
    with pytest.raises(UserError) as refused:  # another world under the same run name
        pipeline_mod.Pipeline(tiny(tmp_path, *PIPE, "data.seed=1"), until="world").run()
    for words in ("stage(s) world", "storage.run_name", "--overwrite"):
        assert words in str(refused.value)
    assert manifest.read_text() == before
    pipeline_mod.Pipeline(cfg, until="world").run()  # the same settings: continues (skips)
    assert manifest.read_text() == before

    def cut(self, source):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod.Pipeline, "_pseudo", cut)
    message = interrupted(pipeline_mod.Pipeline(tiny(tmp_path, *PIPE, "data.seed=1"), overwrite=True).run)
    assert message == (f"interrupted in stage pseudo:template; kept: 1 finished stage(s) in "
                               f"{tmp_path}/r (world) (rerun the same command to continue after them)")
    assert manifest.read_text() != before  # --overwrite: the world stage ran again

    def preempted(self, source):
        raise Terminated()  # SIGTERM under the clipvg CLI (errors.sigterm_as_interrupt)

    monkeypatch.setattr(pipeline_mod.Pipeline, "_pseudo", preempted)
    with pytest.raises(InterruptedRun) as stopped:
        pipeline_mod.Pipeline(tiny(tmp_path, *PIPE, "data.seed=1")).run()
    assert str(stopped.value).startswith("terminated (SIGTERM) in stage pseudo:template; kept: 1 finished")
    assert stopped.value.exit_code == 143
