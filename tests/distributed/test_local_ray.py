"""Starting a private local Ray that times out (a loaded machine, docs/platform-notes.md) is one
line naming what to do, not Ray's traceback; other failures keep theirs."""

from __future__ import annotations

import sys
import types

import pytest
import ray

from clipvg import cli
from clipvg.distributed import local_ray
from clipvg.distributed.local_ray import RayStartError, init_ray

# What Ray 2.60 raises (ray/_private/node.py) when its raylet does not register in time.
TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the "
                    "raylet failed to startup or the GCS has become overloaded.")


@pytest.fixture
def failing_start(monkeypatch):
    """A private local start whose ray.init raises what the test sets (no Ray is started)."""
    failure = types.SimpleNamespace(error=TIMEOUT)

    def init(**kwargs):
        assert kwargs["address"] == "local"
        raise failure.error

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # restored after: init_ray sets a default
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the session's Ray may be up
    monkeypatch.setattr(ray, "init", init)
    return failure


def test_a_local_start_that_times_out_is_one_line(failing_start, monkeypatch, capsys):
    module = types.ModuleType("clipvg_test_ray_start")
    module.add_arguments = lambda parser: None
    module.run = lambda args: init_ray()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "ray-start", (module.__name__, "test command"))
    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    assert cli.main(["ray-start"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("clipvg ray-start: the private local Ray did not start in time "
                               "(The current node timed out during startup.")
    assert "--address" in lines[0] and "less busy" in lines[0]


def test_a_timeout_error_maps_too_and_other_failures_keep_theirs(failing_start):
    failing_start.error = TimeoutError("Timed out after 30 seconds while waiting for node to startup.")
    with pytest.raises(RayStartError):
        init_ray()
    failing_start.error = ValueError("some other problem")
    with pytest.raises(ValueError, match="some other problem"):
        init_ray()


def test_joining_a_cluster_is_told_apart(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not local_ray.joins_cluster(None)
    assert local_ray.joins_cluster("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert local_ray.joins_cluster(None)
