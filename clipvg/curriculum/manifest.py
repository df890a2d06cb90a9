"""Stage manifests: what makes a pipeline rerun skip the stages it has finished.

A finished stage writes ``<run>/stages/<stage>.json`` last (after all of its outputs):

    {"stage": "scores", "key": "<sha256 of config part + input keys>", "config": {...},
     "inputs": {"pseudo": "<key>", ...}, "outputs": {...row counts, URIs...},
     "seconds": 12.3, "finished_at": "2026-11-30T15:20:00Z"}

A stage is skipped when its manifest exists and its ``key`` equals the key the current run
computes: the same config part and the same upstream keys. Change a stage's settings (or an
upstream stage's) and it, and everything downstream of it, runs again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from clipvg.data import storage


def stage_key(stage: str, config_part: Any, inputs: dict[str, str]) -> str:
    """A stable id of what a stage computes from."""
    text = json.dumps({"stage": stage, "config": config_part, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageManifests:
    """The ``stages/`` folder of a pipeline run."""

    run_dir: str
    storage_options: dict

    def uri(self, stage: str) -> str:
        return storage.join(self.run_dir, "stages", f"{stage.replace(':', '-')}.json")

    def finished(self, stage: str, key: str) -> dict | None:
        """The manifest of ``stage`` if it finished with this key, else None."""
        uri = self.uri(stage)
        if not storage.exists(uri, **self.storage_options):
            return None
        manifest = storage.read_json(uri, **self.storage_options)
        return manifest if manifest.get("key") == key else None

    def write(self, stage: str, key: str, config_part: Any, inputs: dict, outputs: dict,
              seconds: float) -> dict:
        manifest = {"stage": stage, "key": key, "config": config_part, "inputs": inputs,
                    "outputs": outputs, "seconds": round(seconds, 2),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        storage.write_json(json.loads(json.dumps(manifest, default=str)), self.uri(stage),
                           **self.storage_options)
        return manifest
