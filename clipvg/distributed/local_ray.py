"""Connecting a clipvg command to Ray: a cluster, the job's cluster, or a private local one."""

from __future__ import annotations

import os

from clipvg.errors import UserError

# What Ray 2.60 raises when the raylet of a local start does not register in time (under load).
_START_TIMEOUT = "timed out during startup"


class RayStartError(UserError):
    """The private local Ray did not start (the machine too loaded to start it in time)."""


def joins_cluster(address: str | None = None) -> bool:
    """True when :func:`init_ray` joins a running cluster (``address``, or ``RAY_ADDRESS`` under
    ``ray job submit``) rather than starting a private Ray on this machine."""
    return bool(address or os.environ.get("RAY_ADDRESS"))


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
    if joins_cluster(address):
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, _node_ip_address="127.0.0.1",
                 log_to_driver=log_to_driver, configure_logging=False)
    except Exception as e:  # Ray raises a bare Exception (or TimeoutError) for a slow start
        if not (isinstance(e, TimeoutError) or _START_TIMEOUT in str(e)):
            raise
        raise RayStartError(
            f"the private local Ray did not start in time ({' '.join(str(e).split())}); the machine "
            "is probably too loaded: retry when it is less busy, or join a running cluster with "
            "--address (e.g. one started with `ray start --head`)") from e


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
