"""Run in a subprocess by the ``golden_run_with_node_loss`` fixture (tests/distributed/conftest.py;
it needs a Ray cluster of its own): a head and two worker nodes on 127.0.0.1
(``ray.cluster_utils.Cluster``) and one tiny training run whose worker's node is removed once
epoch 1's checkpoint is on storage (epoch 2 under way).

    python tests/distributed/fault_run.py OUT.json ROOT OVERRIDE...

Writes ``{"history": ..., "at_kill": [checkpoints on storage when the node went], "killed": id}``.
With ``CLIPVG_NO_NODE_LOSS=1`` no node is removed (the uninterrupted run that regenerates the
golden curve).
"""

import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from clipvg.config import load_config
from clipvg.data import storage
from clipvg.distributed import trainer
from clipvg.distributed.worker import COMPLETE_MARKER

NODE = dict(num_cpus=1, object_store_memory=200 * 2**20, node_ip_address="127.0.0.1")


def worker_node_id() -> str | None:
    """Node of the live Ray Train worker (GCS actor table; no dashboard needed)."""
    for actor in ray._private.state.actors().values():
        if actor["ActorClassName"].endswith("RayTrainWorker") and actor["State"] == "ALIVE":
            return actor["Address"]["NodeID"]
    return None


# The killer gives up after this (the fixture's subprocess timeout is 600 s): a run whose
# checkpoint never appears ends with a report saying so, instead of a thread polling until the
# subprocess is killed.
KILL_DEADLINE_S = 480.0


def kill_during_epoch_2(cluster: Cluster, run_dir: str, report: dict, stop: threading.Event,
                        deadline_s: float = KILL_DEADLINE_S) -> None:
    """Remove the training worker's node once epoch 1's checkpoint is complete; give up (and
    say why in ``report["killer"]``) when ``stop`` is set (training ended) or after
    ``deadline_s`` seconds."""
    deadline = time.monotonic() + deadline_s
    while not storage.exists(f"{run_dir}/checkpoint_epoch0001/{COMPLETE_MARKER}"):
        if stop.wait(0.1):
            report["killer"] = "training ended before epoch 1's checkpoint was complete"
            return
        if time.monotonic() > deadline:
            report["killer"] = f"no complete epoch-1 checkpoint after {deadline_s:.0f} s"
            return
    node_id = worker_node_id()
    fs, path = storage.filesystem(run_dir)
    report["at_kill"] = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path) if "checkpoint_epoch" in p)
    for node in list(cluster.worker_nodes):
        if node.node_id == node_id:
            cluster.remove_node(node, allow_graceful=False)
            report["killed"] = node_id
    report.setdefault("killer", "done" if "killed" in report else f"no worker node hosted {node_id}")


def main(out: str, root: str, *overrides: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE, num_cpus=0))
    for _ in range(2):
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    report: dict = {}
    cfg = load_config(None, [f"storage.root={root}", *overrides])
    stop = threading.Event()
    # a daemon with a deadline: it can never keep this process alive past the training run
    killer = threading.Thread(target=kill_during_epoch_2, args=(cluster, cfg.run_dir, report, stop),
                              daemon=True)
    if not os.environ.get("CLIPVG_NO_NODE_LOSS"):
        killer.start()
    start = time.time()
    try:
        report["history"] = trainer.train(cfg)
    finally:
        stop.set()
    if killer.is_alive():
        killer.join(timeout=60)  # at most one node removal under way
        if killer.is_alive():
            report["killer"] = "still removing the node 60 s after training ended"
    report["seconds"] = time.time() - start
    with open(out, "w") as f:
        json.dump(report, f)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
