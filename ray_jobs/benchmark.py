"""``ray job submit`` entry point for the benchmarks: runs ``clipvg benchmark`` on the cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/benchmark.py data --out runs/bench --s3 s3://bucket/bench-world
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/benchmark.py train --out runs/bench

It joins the cluster the job runs on (``--address auto``) instead of starting a local Ray.
``data`` runs its decode tasks there; ``train`` runs the whole measurement in one Ray task
holding one GPU (``--device auto``: CUDA when the cluster has GPUs, even if the job's driver
sits on a CPU-only head node) and writes the results where the driver runs.
"""

import sys

from clipvg.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--address" not in args:
        args += ["--address", "auto"]
    sys.exit(main(["benchmark", *args]))
