"""``ray job submit`` entry point for training: runs the Ray Train trainer on the cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/train.py --config configs/demo.yaml train.epochs=1

Arguments are those of ``clipvg train``: ``--config CFG`` and dotted
overrides (``storage.root=s3://bucket/runs storage.run_name=try1 scaling.num_workers=4``).
It joins the cluster the job runs on: under ``ray job submit`` Ray sets ``RAY_ADDRESS`` for the
entrypoint; run by hand on a node of a cluster, ``RAY_ADDRESS=auto`` makes ``ray.init()`` join
that node's cluster instead of starting a private local Ray. README.md, "Training on a Ray
cluster", has the runtime_env, authentication and object-store credentials.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")

    from clipvg.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
