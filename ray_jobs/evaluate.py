"""``ray job submit`` entry point for evaluation: ``clipvg evaluate`` on the job's cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/evaluate.py --checkpoint s3://bucket/models/unc \\
        --data s3://bucket/datasets/unc --splits val,testA,testB --out s3://bucket/evals/unc \\
        --actors 4 --gpus-per-actor 1

Arguments are those of ``clipvg evaluate`` (:mod:`clipvg.distributed.evaluate_cli`). The
checkpoint, dataset and output are read and written by the job's driver and by the Ray Data
workers, so on a cluster they must be URIs every node reaches (object storage, or a shared
filesystem); credentials come from the nodes' environment, never from the job's runtime_env.
It joins the cluster the job runs on (``RAY_ADDRESS``, set by ``ray job submit``).
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")

    from clipvg.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
