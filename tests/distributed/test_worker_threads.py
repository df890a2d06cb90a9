"""The torch threads of a Ray Train worker (clipvg.distributed.worker.worker_threads): Ray sets
OMP_NUM_THREADS from the worker's CPU reservation, so the worker sets torch's threads itself."""

import pytest

from clipvg.config import ConfigError, ScalingConfig, load_config
from clipvg.distributed.worker import worker_threads


@pytest.mark.parametrize("cpus, threads", [(0.5, 1), (0.9, 1), (1.0, 1), (2.0, 2), (3.7, 3), (8.0, 8)])
def test_threads_follow_the_cpu_reservation_by_default(cpus, threads):
    assert worker_threads(ScalingConfig(cpus_per_worker=cpus)) == threads


def test_threads_per_worker_overrides_the_reservation():
    assert worker_threads(ScalingConfig(cpus_per_worker=0.5, threads_per_worker=2)) == 2
    assert load_config(None, ["scaling.threads_per_worker=4"]).scaling.threads_per_worker == 4
    with pytest.raises(ConfigError, match="scaling.threads_per_worker"):
        load_config(None, ["scaling.threads_per_worker=0"])
