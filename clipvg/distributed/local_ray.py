"""Connecting a clipvg command to Ray: a cluster, the job's cluster, or a private local one."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None, *, log_to_driver: bool = True,
             dashboard: bool = False) -> None:
    """Join ``address`` (or the job's cluster when run by ``ray job submit``, which sets
    ``RAY_ADDRESS``), else start a private Ray on 127.0.0.1 for this process (token auth off:
    nothing else can reach it). ``dashboard``: Ray Tune runs that nest Ray Train need it (without
    it the first trial's placement group is never released, see docs/platform-notes)."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, _node_ip_address="127.0.0.1",
             log_to_driver=log_to_driver, configure_logging=False)


def quiet_data() -> None:
    """Ray Data without progress bars or start-of-execution lines (a benchmark prints a table)."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def cluster_gpus() -> float:
    """GPUs of the connected cluster (Ray must be initialised)."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    return ray.cluster_resources().get("GPU", 0)


def run_as_task(fn, *args, num_cpus: float = 1, num_gpus: float = 0):
    """``fn(*args)`` in one Ray task with these resources, e.g. on a node that has the GPU."""
    # deferred: loads Ray; paid only when this runs, not on import
    import ray

    return ray.get(ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn).remote(*args))


def add_ray_arguments(parser) -> None:
    """``--address`` and ``--num-cpus``, shared by every command that runs on Ray."""
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto', ray://...); default: the job's cluster "
                             "under `ray job submit`, else a private local Ray")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the private local Ray")
