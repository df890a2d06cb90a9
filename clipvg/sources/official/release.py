"""A pipeline run's curriculum as CLIP-VG's refined release (method doc §1.1, §6, §7).

:func:`export_release` reads the stage manifests of a ``clipvg pipeline`` run
(``<run>/stages/{world,ssa,msa}.json``, written last by each stage) and writes into a folder:

* ``{d}_train_pseudo_refine_{h}.pth``: SSA's selection, the rows of SSA's chosen pool (the
  first source's samples with reliability > h, strict);
* ``train_separate/{t}_{d}_train_pseudo_{source}_{h_t}.pth`` per MSA step, ``t`` = the source's
  1-based position in MSA's order: the rows MSA's final pool selects from that source;
* ``export.json``: which run, dataset, key, thresholds and measurers, rows per file, and when.

``h`` is written as in the release (0.5 -> ``0_5``). Entries are official entries of key ``d``
(:mod:`clipvg.sources.official.export`): a row whose ``sample_id`` the run's dataset holds with
``box_raw`` (imported from official files) comes back with the file's numbers and aux fields;
other rows (the synthetic world) are converted from ``box`` (x0, y0, x1, y1 float32 pixels) to
``[x, y, w, h]`` (COCO family) or ``[x1, y1, x2, y2]`` (referit, flickr) with placeholder aux
fields. Texts are written as stored (no lower-casing, no template): a refined release is a
subset of the release's entries.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clipvg import __version__
from clipvg.config import PoolEntry
from clipvg.data import storage
from clipvg.data.pools import read_entry
from clipvg.errors import UserError
from clipvg.sources.official.export import export_official
from clipvg.sources.official.formats import (
    KEYS, TRAIN_SEPARATE, check_key, refine_file, separate_file, threshold_tag,
)

STAGES = ("world", "ssa", "msa")


def stage_outputs(run: str, **storage_options: Any) -> dict[str, dict]:
    """stage -> ``outputs`` of the run's finished world / ssa / msa stages; one error naming
    every stage that has not finished."""
    outputs, missing = {}, []
    for stage in STAGES:
        uri = storage.join(run, "stages", f"{stage}.json")
        if not storage.exists(uri, **storage_options):
            missing.append(stage)
            continue
        outputs[stage] = storage.read_json(uri, **storage_options).get("outputs") or {}
    if missing:
        raise UserError(f"{run}: stage(s) {', '.join(missing)} have not finished (no "
                        f"stages/<stage>.json); run `clipvg pipeline` through msa first")
    return outputs


def dataset_key(uri: str, dataset: str | None, **storage_options: Any) -> str:
    """``dataset``, or the key in the dataset's manifest when it is an official one."""
    if dataset is not None:
        check_key(dataset)
        return dataset
    manifest_uri = storage.join(uri, "manifest.json")
    if not storage.exists(manifest_uri, **storage_options):
        raise UserError(f"the run's dataset {uri} is gone (no manifest.json)")
    key = storage.read_json(manifest_uri, **storage_options).get("dataset")
    if key not in KEYS:
        raise UserError(f"{uri} is dataset {key!r}, not an official key: give --dataset KEY "
                        f"({', '.join(KEYS)}) to write its rows in that key's format")
    return key


def plan(ssa: dict, msa: dict, key: str) -> list[dict]:
    """The files of the release: ``{file, entries, source, measurer, h, position}`` each
    (``file`` relative to the folder), SSA's first, then MSA's in step order."""
    files = [dict(file=refine_file(key, threshold_tag(ssa["h"])), source=ssa["source"],
                  measurer=ssa["source"], h=ssa["h"], position=None,
                  entries=ssa["chosen"]["pool"])]
    steps, final = msa["steps"], msa["final"]["pool"]
    if len(steps) != len(final):  # one entry per step, in step order (schedulers.msa)
        raise UserError(f"msa manifest: {len(steps)} steps but {len(final)} final pool entries")
    for step, entry in zip(steps, final):
        own = (step.get("chosen") or {}).get("pool") or [entry]
        if own[-1]["samples"] != entry["samples"]:
            raise UserError(f"msa manifest: step {step['source']} added {own[-1]['samples']}, "
                            f"the final pool has {entry['samples']} there")
        position = msa["order"].index(step["source"]) + 1
        name = separate_file(position, key, step["source"], threshold_tag(step["h"]))
        files.append(dict(file=f"{TRAIN_SEPARATE}/{name}", source=step["source"],
                          measurer=step["measurer"], h=step["h"], position=position,
                          entries=[entry]))
    return files


def selected_rows(entries: list[dict], dataset_uri: str, **storage_options: Any) -> list[dict]:
    """The rows the pool ``entries`` select (reliability > threshold), in entry and table
    order; a row the dataset holds as imported (``box_raw``) is the dataset's row."""
    parts = [read_entry(PoolEntry(**e), **storage_options) for e in entries]
    rows = [r for part in parts for r in part.to_pylist()]
    if not rows:
        return rows
    ids = pa.array([r["sample_id"] for r in rows], pa.string())
    imported = storage.read_table(storage.join(dataset_uri, "samples"),
                                  filter=pc.field("sample_id").isin(ids), **storage_options)
    by_id = {}
    if "box_raw" in imported.column_names:
        by_id = {r["sample_id"]: r for r in imported.to_pylist() if r["box_raw"] is not None}
    # any other row is written from its box, whatever file numbers it carries along
    return [by_id.get(r["sample_id"]) or {k: v for k, v in r.items() if k not in _FILE_FIELDS}
            for r in rows]


_FILE_FIELDS = ("box_raw", "box_format", "aux")


def export_release(run: str, out_dir: str, *, dataset: str | None = None,
                   overwrite: bool = False, **storage_options: Any) -> dict:
    """Write the refined release of pipeline run ``run`` into ``out_dir`` (see the module
    docstring); returns what ``export.json`` says. A file that exists is refused (before
    anything is written) unless ``overwrite``."""
    so = storage_options
    stages = stage_outputs(run, **so)
    uri = stages["world"]["uri"]
    key = dataset_key(uri, dataset, **so)
    files = plan(stages["ssa"], stages["msa"], key)
    targets = [f["file"] for f in files] + ["export.json"]
    there = [t for t in targets if storage.exists(storage.join(out_dir, t), **so)]
    if there and not overwrite:
        raise UserError(f"{storage.join(out_dir, there[0])} exists ({len(there)} of the "
                        "release's files do); replace them with --overwrite")
    for f in files:
        rows = selected_rows(f.pop("entries"), uri, **so)
        f["rows"] = export_official(rows, key, storage.join(out_dir, f["file"]), **so)
    summary = dict(
        kind="clipvg-refined-release", run=run, dataset_uri=uri, dataset=key,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        created_by=f"clipvg {__version__}", ssa=files[0],
        msa=dict(order=stages["msa"]["order"], thresholds=stages["msa"]["thresholds"],
                 steps=files[1:]),
        counts={f["file"]: f["rows"] for f in files})
    storage.write_json(summary, storage.join(out_dir, "export.json"), **so)
    return summary


__all__ = ["export_release", "stage_outputs", "dataset_key", "plan", "selected_rows"]
