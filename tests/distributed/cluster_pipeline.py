"""One tiny pipeline, taken from one cluster to another the way a user would: the run's state
is its storage (S3, moto here), not the cluster.

1. ``cluster/aws.yaml`` as a **static** cluster (:class:`StaticCluster`: a head with no CPU, one
   gpu-like worker, one data worker, each a ``ray start`` process on 127.0.0.1 with the node
   type's resources and labels). ``ray job submit`` runs ``ray_jobs/pipeline.py``; the job is
   stopped (``ray job stop``) once the template measurer's scores are written.
2. The same command submitted to ``cluster/aws.yaml`` as an **autoscaling** cluster
   (:class:`FakeClusterHead`, both worker types at zero nodes): the job continues after the
   finished stages; the autoscaler adds the nodes it asks for and removes them once idle.

Both jobs ask for ``clipvg_model`` (training trials, scoring actors) and ``clipvg_data`` (Ray
Data tasks) through ``scaling.model_resources`` / ``scaling.data_resources``. Each job's state
records (nodes, actors, tasks: kept by the GCS after the job ends) are taken before its cluster
stops. test_pipeline.py checks the pipeline's result, test_cluster_rehearsal.py the placement
and the scaling.

No ``runtime_env.working_dir``: the nodes of one machine share one session folder, and one
node's runtime-env agent deletes the unpacked working_dir that another node still uses (seen).
The nodes run this checkout's virtualenv instead, as cloud nodes run the checkout that the
launcher YAML installs on each of them.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from clipvg.data import storage
from clipvg_tests_fake_cluster import DemandWatch, FakeClusterHead, StaticCluster, wait_until
from clipvg_tests_ray_head import JOB_TIMEOUT_S, REPO, TERMINAL, wait
from tiny_train import LEARNING_TRAIN

LAUNCHER_YAML = REPO / "cluster" / "aws.yaml"
UPDATE = bool(os.environ.get("CLIPVG_UPDATE_GOLDEN"))  # the golden run: one job, uninterrupted
IDLE_TIMEOUT_MIN = 0.25  # 15 s (the cloud configs use minutes)
# A pipeline that decides (tests/golden/pipeline_tiny.json says why): small models that learn
# (LEARNING_TRAIN), every training given the same 2 x 1,000 samples whatever its pool, and two
# thresholds whose pools differ. The demo's generator floor and measurer choice
# (configs/demo.yaml) so that its measured numbers carry over.
TINY_PIPELINE = [
    *LEARNING_TRAIN, "train.epochs=2", "curriculum.samples_per_epoch=1000",
    "curriculum.sources=[template,relation]", "curriculum.generators={template: {min_area_frac: 0.0039}}",
    "curriculum.thresholds=[0.0,0.5]", "curriculum.measurer_selection=own", "curriculum.source_order=given",
    "curriculum.launcher=in_trial", "curriculum.max_concurrent_trials=2",
    "curriculum.scoring.actors=1", "curriculum.scoring.cpus_per_actor=0.5", "curriculum.scoring.batch_size=16",
    "storage.run_name=tiny",
]
# where the work goes (not part of the golden run's config: placement changes no result)
PLACEMENT = ["scaling.model_resources={clipvg_model: 1}", "scaling.data_resources={clipvg_data: 1}"]
STOP_AFTER = "scores-template.json"  # the manifest whose appearance stops the first job


def job_state(client, dashboard_url: str, job_id: str) -> dict:
    """A finished job's status, log, and the cluster's state records of it."""
    from ray.util.state import list_actors, list_nodes, list_tasks

    info = client.get_job_info(job_id)
    by_job = [("job_id", "=", info.job_id)]
    return {"status": str(client.get_job_status(job_id).value), "logs": client.get_job_logs(job_id),
            "info": info, "nodes": {n.node_id: n for n in list_nodes(address=dashboard_url, detail=True)},
            "actors": list_actors(address=dashboard_url, filters=by_job, detail=True, limit=10_000),
            "tasks": list_tasks(address=dashboard_url, filters=by_job, detail=True, limit=10_000)}


def finished_stages(root: str, **options) -> dict[str, str]:
    """Manifest file name -> ``finished_at`` of every finished stage under ``root``."""
    fs, path = storage.filesystem(f"{root}/tiny/stages", **options)
    fs.invalidate_cache()
    return {name.rsplit("/", 1)[-1]: json.loads(fs.cat_file(name))["finished_at"]
            for name in fs.ls(path, detail=False)}


def run_on_static_cluster(temp: Path, entry: str, root: str, s3) -> dict:
    """Job 1 on the static cluster, stopped after :data:`STOP_AFTER` (run whole with UPDATE)."""
    from ray.job_submission import JobSubmissionClient

    cluster = StaticCluster(temp / "st", LAUNCHER_YAML).start()
    try:
        client = JobSubmissionClient(cluster.dashboard_url)
        t0 = time.monotonic()
        job = client.submit_job(entrypoint=entry)
        if UPDATE:
            assert wait(client, job, timeout=JOB_TIMEOUT_S) == "SUCCEEDED", client.get_job_logs(job)[-6000:]
        else:
            while not storage.exists(f"{root}/tiny/stages/{STOP_AFTER}", **s3.options):
                assert str(client.get_job_status(job).value) not in TERMINAL, client.get_job_logs(job)[-6000:]
                assert time.monotonic() - t0 < JOB_TIMEOUT_S, "the pipeline did not reach scores:template in time"
                time.sleep(0.3)
            client.stop_job(job)
            assert wait(client, job, timeout=120) == "STOPPED"
        state = job_state(client, cluster.dashboard_url, job)
        print(f"\njob 1 (static cluster) {state['status']} after {time.monotonic() - t0:.0f} s")
        return state
    finally:
        cluster.stop()
        assert cluster.alive() == [], f"processes of the static cluster survived: {cluster.alive()}"


def run_on_autoscaling_cluster(temp: Path, entry: str) -> dict:
    """Job 2 on the autoscaling cluster, then the wait for its gpu-like node to go idle-dead."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes

    cluster = FakeClusterHead(temp / "as", LAUNCHER_YAML, idle_timeout_minutes=IDLE_TIMEOUT_MIN)
    cluster.start()
    try:
        client = JobSubmissionClient(cluster.dashboard_url)
        watch = DemandWatch(cluster.address, "clipvg_model")
        watch.start()
        submitted = time.time()
        job = client.submit_job(entrypoint=entry)
        wait(client, job, timeout=JOB_TIMEOUT_S)
        state = job_state(client, cluster.dashboard_url, job)
        print(f"job 2 (autoscaling cluster) {state['status']} after {time.time() - submitted:.0f} s")
        assert state["status"] == "SUCCEEDED", state["logs"][-6000:]

        def model_nodes_gone():
            """The gpu-like nodes, once none of them is alive any more (else None)."""
            model = [n for n in list_nodes(address=cluster.dashboard_url, detail=True)
                     if "clipvg_model" in n.resources_total]
            return model if model and all(n.state == "DEAD" for n in model) else None
        gone = wait_until(model_nodes_gone, timeout=IDLE_TIMEOUT_MIN * 60 + 120)
        wait_until(lambda: len(watch.leaves) == len(watch.joins) > 0, timeout=10)
        watch.stop()
        return {**state, "gone": gone, "watch": watch, "submitted": submitted, "monitor": cluster.monitor_log()}
    finally:
        cluster.stop()
        assert cluster.alive() == [], f"processes of the autoscaling cluster survived: {cluster.alive()}"


def run(temp: Path, s3) -> dict:
    """Both jobs (see the module doc); returns their states, the finished stages at the stop
    and the overrides of the run. The first job generates the run's world (its own stage)."""
    root = s3.uri("pipeline")
    overrides = [*TINY_PIPELINE, *PLACEMENT, f"storage.root={root}", f"storage.endpoint_url={s3.endpoint_url}"]
    entry = shlex.join(["python", str(REPO / "ray_jobs" / "pipeline.py"), *overrides])
    static = run_on_static_cluster(temp, entry, root, s3)
    finished_before = {} if UPDATE else finished_stages(root, **s3.options)
    autoscaling = run_on_autoscaling_cluster(temp, entry)
    return {"static": static, "autoscaling": autoscaling, "finished_before": finished_before,
            "overrides": overrides}
