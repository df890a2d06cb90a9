"""The laptop-to-cluster rehearsal: ``cluster/aws.yaml``'s node types, run by Ray's autoscaler
over the fake multi-node provider on 127.0.0.1 (tests/distributed/fake_cluster.py).

The head advertises no CPU and both worker types start at zero nodes, as on the cloud. A short
pipeline (pseudo-labels, one measurer trained by Ray Train, its scoring; ``--until
scores:template``) is submitted with ``ray job submit`` and asks for ``clipvg_model`` (model
work) and ``clipvg_data`` (Ray Data work) through ``scaling.model_resources`` /
``scaling.data_resources``. The test checks, from Ray's state API and the autoscaler's own log:

* the autoscaler added a ``gpu_worker`` when the pipeline asked for the training resource, and
  removed it as idle after ``idle_timeout_minutes`` once the job was done (both times measured);
* the Ray Train worker and the scoring actors ran on the gpu-like node, every Ray Data
  read/decode/generate task on the data node, and none of them on the gpu-like node or the head.
"""

from __future__ import annotations

import shlex
import time

import pytest

from clipvg.data import storage
from clipvg_tests_fake_cluster import DemandWatch, FakeClusterHead, autoscaler_events, dump, wait_until
from clipvg_tests_ray_head import JOB_TIMEOUT_S, REPO, wait
from tiny_train import TINY_TRAIN

IDLE_TIMEOUT_MIN = 0.25  # 15 s (the cloud configs use minutes)
SHORT_PIPELINE = [
    *TINY_TRAIN, "train.epochs=1", "curriculum.sources=[template]", "curriculum.launcher=ray_train",
    "curriculum.max_concurrent_trials=1", "scaling.cpus_per_worker=0.5", "scaling.data_cpus=0.5",
    "scaling.model_resources={clipvg_model: 1}", "scaling.data_resources={clipvg_data: 1}",
    "curriculum.scoring.actors=1", "curriculum.scoring.cpus_per_actor=0.5", "curriculum.scoring.batch_size=8",
    "storage.run_name=rehearsal",
]
DATA_TASKS = ("_decode_batch", "generate_batch", "ReadParquet")  # Ray Data operator names


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, tiny_world):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_nodes, list_tasks

    temp = tmp_path_factory.mktemp("fc")
    head = FakeClusterHead(temp, REPO / "cluster" / "aws.yaml", idle_timeout_minutes=IDLE_TIMEOUT_MIN)
    head.start()
    try:
        client = JobSubmissionClient(head.dashboard_url)
        root = temp / "runs"
        args = [*SHORT_PIPELINE, f"storage.root={root}", f"data.uri={tiny_world}"]
        # No runtime_env working_dir: the fake nodes share one session folder, so one node's
        # runtime-env agent deletes the unpacked working_dir that another node still uses. The
        # nodes run this checkout's virtualenv instead, as the cloud nodes run the checkout
        # that cluster/aws.yaml installs on each of them.
        entry = shlex.join(["python", str(REPO / "ray_jobs" / "pipeline.py"), "--until", "scores:template", *args])
        watch = DemandWatch(head.address, "clipvg_model")
        watch.start()
        submitted = time.time()
        job = client.submit_job(entrypoint=entry)
        status = wait(client, job, timeout=JOB_TIMEOUT_S)
        info = client.get_job_info(job)
        logs = client.get_job_logs(job)
        assert status == "SUCCEEDED", logs[-6000:]
        nodes = {n.node_id: n for n in list_nodes(address=head.dashboard_url, detail=True)}
        # state records of the job (kept by the GCS after the job ended)
        actors = list_actors(address=head.dashboard_url, filters=[("job_id", "=", info.job_id)], detail=True,
                             limit=10_000)
        tasks = list_tasks(address=head.dashboard_url, filters=[("job_id", "=", info.job_id)], detail=True,
                           limit=10_000)

        def model_node_gone():
            """The gpu-like nodes, once none of them is alive any more (else None)."""
            model = [n for n in list_nodes(address=head.dashboard_url, detail=True)
                     if "clipvg_model" in n.resources_total]
            return model if model and all(n.state == "DEAD" for n in model) else None
        gone = wait_until(model_node_gone, timeout=IDLE_TIMEOUT_MIN * 60 + 120)
        wait_until(lambda: len(watch.leaves) == len(watch.joins) > 0, timeout=10)
        watch.stop()
        yield dict(head=head, info=info, logs=logs, nodes=nodes, actors=actors, tasks=tasks, gone=gone,
                   submitted=submitted, monitor=head.monitor_log(), root=root, watch=watch)
    finally:
        head.stop()
        assert head.alive() == [], f"processes of the fake cluster survived: {head.alive()}"


def role(node) -> str:
    r = node.resources_total
    return "model" if "clipvg_model" in r else "data" if "clipvg_data" in r else "head"


def test_the_pipeline_ran_to_the_stage_it_was_told(rehearsal):
    assert "[pipeline] scores:template: done" in rehearsal["logs"]
    assert "stopped after scores:template" in rehearsal["logs"]
    rows = storage.read_table(f"{rehearsal['root']}/rehearsal/scores/template-on-template")
    assert rows.num_rows > 0


def test_model_work_ran_on_the_gpu_like_node(rehearsal):
    nodes, actors = rehearsal["nodes"], rehearsal["actors"]
    train = [a for a in actors if a.class_name == "RayTrainWorker"]
    scorers = [a for a in actors if "Scorer" in a.class_name]
    assert train and scorers, sorted({a.class_name for a in actors})
    for a in train + scorers:
        assert role(nodes[a.node_id]) == "model", (a.class_name, nodes[a.node_id].resources_total)
    labels = nodes[train[0].node_id].labels
    assert labels.get("clipvg/role") == "model", labels


def test_data_work_ran_on_the_data_node_only(rehearsal):
    nodes = rehearsal["nodes"]
    data = [t for t in rehearsal["tasks"] if any(k in t.name for k in DATA_TASKS)]
    assert {k for k in DATA_TASKS[:2] if any(k in t.name for t in data)} == set(DATA_TASKS[:2]), \
        sorted({t.name for t in rehearsal["tasks"]})
    placed = {(t.name, role(nodes[t.node_id])) for t in data if t.node_id}
    assert {r for _, r in placed} == {"data"}, placed


def test_the_autoscaler_added_a_gpu_worker_on_demand_and_removed_it_when_idle(rehearsal, tmp_path):
    events = autoscaler_events(rehearsal["monitor"])
    added = [t for t, e in events if e.startswith("Adding") and "type gpu_worker" in e]
    removed = [(t, e) for t, e in events if e.startswith("Removing") and "type gpu_worker" in e]
    watch, nodes = rehearsal["watch"], rehearsal["nodes"]
    assert added and removed, events
    assert rehearsal["gone"], f"the gpu-like node was not removed: {events}"
    assert all(e.endswith("(idle).") for _, e in removed), removed
    # the gpu-like node's last piece of work (a task or actor call that ran there)
    idle_since = max(t.end_time_ms for t in rehearsal["tasks"]
                     if t.node_id and role(nodes[t.node_id]) == "model" and t.end_time_ms) / 1000
    record = {"demand_to_node_joined_s": round(watch.joins[0] - watch.demand, 1),
              "demand_to_launch_decision_s": round(added[0] - watch.demand, 1),
              "idle_to_removal_decision_s": round(removed[-1][0] - idle_since, 1),
              "idle_to_node_left_s": round(watch.leaves[-1] - idle_since, 1),
              "job_end_to_node_left_s": round(watch.leaves[-1] - rehearsal["info"].end_time / 1000, 1),
              "idle_timeout_s": IDLE_TIMEOUT_MIN * 60, "gpu_worker_starts": len(watch.joins),
              "submit_to_job_end_s": round(rehearsal["info"].end_time / 1000 - rehearsal["submitted"], 1),
              "poll_errors": len(watch.errors), "events": events}
    dump(tmp_path / "autoscaling.json", record)
    print(f"\nautoscaling rehearsal: {record}")
    assert watch.demand and watch.joins and len(watch.leaves) == len(watch.joins), \
        (watch.demand, watch.joins, watch.leaves, watch.errors[-3:])
    assert watch.demand <= added[0] + 1 and watch.joins[0] - watch.demand <= 60, record  # added on demand
    # removed as idle: once the timeout had run since its last work, and soon after. (With a
    # 15 s timeout the node may also be removed between two stages and added again.)
    assert IDLE_TIMEOUT_MIN * 60 - 2 <= watch.leaves[-1] - idle_since <= IDLE_TIMEOUT_MIN * 60 + 60, record
