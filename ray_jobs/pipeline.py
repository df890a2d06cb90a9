"""``ray job submit`` entry point for the curriculum pipeline (``clipvg pipeline``) on a cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/pipeline.py --config configs/demo.yaml storage.root=s3://bucket/runs

Arguments are those of ``clipvg pipeline``: ``--config CFG`` and dotted overrides. Resubmitting
the same command continues the run: finished stages are skipped (their manifests under
``<run>/stages/``), an interrupted training continues from its last checkpoint. The job joins
the cluster it runs on (``RAY_ADDRESS``, set by ``ray job submit``); the cluster needs Ray's
dashboard (it serves job submission anyway), which Ray Tune's nested trainers rely on.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")

    from clipvg.cli import main

    sys.exit(main(["pipeline", *sys.argv[1:]]))
