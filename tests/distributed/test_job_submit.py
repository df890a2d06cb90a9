"""``ray job submit`` against a real Ray head (``ray start --head`` in a subprocess, see
ray_head.py): what an operator does with a cluster, with token authentication on.

The working dir is uploaded the way ``ray job submit --working-dir .`` uploads it (.gitignore
and .rayignore honoured). The head inherits the ``s3`` fixture's AWS_* variables, as a node
inherits its credentials from its own environment; nothing secret goes into the job's
runtime_env, which the dashboard shows.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from clipvg.data import storage
from clipvg.distributed.worker import complete_checkpoints
from clipvg.engine.run_log import read_metrics
from clipvg_tests_ray_head import JOB_TIMEOUT_S, REPO, TERMINAL, wait

def test_rayignore_alone_keeps_local_state_out_of_the_upload():
    """.rayignore (plus Ray's default excludes) keeps the venv, outputs and test fixtures out of
    the working_dir package even where .gitignore is not honoured
    (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1); paths need not exist to be matched."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    excludes = [_get_excludes(REPO, ray_constants.get_runtime_env_default_excludes()),
                *get_excludes_from_ignore_files(REPO, include_gitignore=False)]

    def uploaded(rel: str) -> bool:
        return not any(exclude(REPO / rel) for exclude in excludes)

    for rel in (".venv/bin/python", "runs/demo/best/model.safetensors", ".git/HEAD",
                "tests/fixtures/clipvg_official/tiny/cases.pt", ".pytest_cache/v/x",
                "clipvg.egg-info/PKG-INFO", "clipvg/__pycache__/cli.cpython-311.pyc"):
        assert not uploaded(rel), rel
    for rel in ("clipvg/config.py", "clipvg/assets/towers/tiny-synth-v1/open_clip_model.safetensors",
                "configs/demo.yaml", "ray_jobs/train.py", "pyproject.toml"):
        assert uploaded(rel), rel


PROBE = """
import os, sys, clipvg
print("python", sys.executable)
print("clipvg", clipvg.__file__)
print("cwd", os.getcwd())
print("files", " ".join(sorted(os.listdir("."))))
print("s3 endpoint from the node:", "AWS_ENDPOINT_URL" in os.environ)
"""


def test_trivial_job_runs_the_uploaded_code(head, client):
    t0 = time.monotonic()
    job_id = client.submit_job(entrypoint=f"python -c {shlex.quote(PROBE)}",
                               runtime_env={"working_dir": str(REPO)})
    status = wait(client, job_id, timeout=120)
    elapsed = time.monotonic() - t0
    log = client.get_job_logs(job_id)
    print(f"\ntrivial job: {status} in {elapsed:.1f} s")
    assert status == "SUCCEEDED", log
    lines = dict(line.split(" ", 1) for line in log.splitlines()
                 if line.split(" ", 1)[0] in {"python", "clipvg", "cwd", "files"})
    # `python` resolved with the head's PATH: the virtualenv's interpreter
    assert Path(lines["python"]).parent == Path(sys.prefix) / "bin"
    # the job runs in the uploaded copy of the repository, and imports clipvg from it
    cwd = Path(lines["cwd"])
    assert cwd.is_relative_to(head.temp_dir) and cwd != REPO
    assert Path(lines["clipvg"]).is_relative_to(cwd)
    files = set(lines["files"].split())
    assert {"clipvg", "configs", "ray_jobs", "pyproject.toml"} <= files
    assert not files & {".venv", "runs", ".git", "tests", ".pytest_cache", ".hypothesis"}
    # object-store settings come from the node's environment, not from the job's runtime_env
    assert "s3 endpoint from the node: True" in log
    info = client.get_job_info(job_id)
    assert "AWS_" not in repr(info.runtime_env)


def test_head_is_separate_from_the_in_process_ray(head, client, ray_local):
    """The head and the session's in-process Ray run side by side; neither sees the other's
    processes as its own, so stopping the head by pid leaves the session's Ray alone."""
    ray = ray_local
    node = ray._private.worker._global_node
    assert node.gcs_address.rsplit(":", 1)[1] != str(head.gcs_port)
    local_pids = {info.process.pid for infos in node.all_processes.values() for info in infos}
    assert local_pids and not local_pids & set(head.refresh_pids())
    assert os.getpid() not in head.pids
    assert ray.get(ray.remote(lambda: 42).options(num_cpus=0.1).remote()) == 42
    job_id = client.submit_job(entrypoint="echo head-ok")
    assert wait(client, job_id, timeout=120) == "SUCCEEDED"
    assert "head-ok" in client.get_job_logs(job_id)


@pytest.mark.slow
def test_train_job_killed_and_resubmitted_resumes(head, client, s3):
    """The acceptance tests: `ray job submit ... python ray_jobs/train.py` trains with Ray Train
    on the job's cluster and leaves checkpoints, metrics and the best model in object storage;
    the job's driver killed after its first checkpoint (``ray job stop``: SIGTERM, then SIGKILL)
    and the command submitted again continues from the last checkpoint: no epoch is trained or
    reported twice.

    The first job trains with one worker, the resubmitted one with two DDP workers (a run
    continued on a bigger cluster: the data order depends on (seed, epoch), not on the worker
    count). Both ranks restore the checkpoint from S3, and their evaluations, merged, count
    every held-out sample once."""
    root = s3.uri("job")
    run_dir = storage.join(root, "job")
    overrides = [
        "train.epochs=3", "train.max_steps_per_epoch=3", "train.log_every=1",
        "data.synth.train_images=40", "data.synth.val_images=8", "data.synth.test_images=8",
        "scaling.cpus_per_worker=0.5", "scaling.data_cpus=0.5",
        f"storage.root={root}", "storage.run_name=job",
        f"storage.endpoint_url={s3.endpoint_url}",  # no secret: keys come from the node env
    ]
    entrypoint = shlex.join(["python", "ray_jobs/train.py", "--config", "configs/demo.yaml", *overrides])
    t0 = time.monotonic()
    first = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})
    while not complete_checkpoints(run_dir, **s3.options):
        status = str(client.get_job_status(first).value)
        assert status not in TERMINAL, client.get_job_logs(first)[-6000:]
        assert time.monotonic() - t0 < JOB_TIMEOUT_S, "no checkpoint in time"
        time.sleep(0.2)
    client.stop_job(first)
    assert wait(client, first, timeout=120) == "STOPPED"
    at_kill = complete_checkpoints(run_dir, **s3.options)
    print(f"\nfirst job stopped after {time.monotonic() - t0:.1f} s with {at_kill}")

    second = client.submit_job(entrypoint=entrypoint + " scaling.num_workers=2 train.resume=true",
                               runtime_env={"working_dir": str(REPO)})
    status = wait(client, second, timeout=JOB_TIMEOUT_S)
    log = client.get_job_logs(second)
    print(f"second job: {status} after {time.monotonic() - t0:.1f} s in all\n{log[-3000:]}")
    assert status == "SUCCEEDED", log[-6000:]
    assert f"resuming from {run_dir}/{at_kill[-1]}" in log
    assert "held-out" in log
    assert "AWS_" not in repr(client.get_job_info(second).runtime_env)

    history = storage.read_json(f"{run_dir}/history.json", **s3.options)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert history["world_size"] == 2
    # each rank evaluates its own images; merged, every sample of the split counts once
    fs, path = storage.filesystem(root, **s3.options)
    (world,) = fs.glob(f"{path}/worlds/*/samples")
    samples = storage.read_table(f"s3://{world}", **s3.options).column("split").to_pylist()
    assert all(e["val"]["total"] == samples.count("val") > 0 for e in history["epochs"])
    assert history["test"]["test"]["total"] == samples.count("test") > 0
    resumed_at = int(at_kill[-1][-4:])  # checkpoint_epochNNNN
    for epoch in range(1, resumed_at + 1):
        assert f"epoch {epoch}/3: train loss" not in log, f"epoch {epoch} was trained again"
    records = read_metrics(run_dir, **s3.options)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 10))
    last = f"{run_dir}/{complete_checkpoints(run_dir, **s3.options)[-1]}"
    for name in ("model.safetensors", "optimizer.pt", "state.json", "config.yaml"):
        assert storage.exists(f"{last}/{name}", **s3.options), f"{last} lacks {name}"
    assert storage.exists(f"{run_dir}/best/model.safetensors", **s3.options)


@pytest.mark.slow
def test_evaluate_job_on_s3(head, client, s3, tmp_path):
    """`ray job submit ... python ray_jobs/evaluate.py`: the converted official fixture checkpoint
    on a flickr-layout split imported to S3, one replica on the job's cluster, results on S3."""
    from official_eval import convert_fixture, import_split_files, random_rows, write_images, write_split_files

    sizes = {"a.jpg": (90, 60), "b.jpg": (60, 80)}
    write_images(tmp_path / "images", sizes)
    write_split_files(tmp_path / "splits", "flickr",
                      {"test": random_rows(sizes, {"a.jpg": 2, "b.jpg": 1}, seed=0)})
    data, model, out = s3.uri("job-data"), s3.uri("job-model"), s3.uri("job-eval")
    import_split_files("flickr", tmp_path / "splits", tmp_path / "images", data, ["test"], **s3.options)
    folder = Path(convert_fixture(tmp_path / "model"))
    for name in ("model.safetensors", "model_config.json"):
        storage.write_bytes((folder / name).read_bytes(), f"{model}/{name}", **s3.options)
    entrypoint = shlex.join(["python", "ray_jobs/evaluate.py", "--checkpoint", model, "--data", data,
                             "--splits", "test", "--out", out, "--endpoint-url", s3.endpoint_url,
                             "--actors", "1", "curriculum.scoring.cpus_per_actor=0.5", "scaling.data_cpus=0.5"])
    t0 = time.monotonic()
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)})
    status = wait(client, job_id, timeout=JOB_TIMEOUT_S)
    log = client.get_job_logs(job_id)
    print(f"\nevaluate job: {status} in {time.monotonic() - t0:.1f} s")
    assert status == "SUCCEEDED", log[-6000:]
    assert "test: Acc@0.5" in log
    split = storage.read_json(f"{out}/metrics.json", **s3.options)["splits"]["test"]
    assert split["rows"] == split["total"] == 3 and split["failed"] == 0
    assert storage.read_table(f"{out}/predictions", **s3.options).num_rows == 3
