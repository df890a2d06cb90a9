"""Pseudo-label sources a dataset carries ready-made (e.g. CLIP-VG's released files).

A dataset may hold pseudo-labels that were made elsewhere: ``clipvg import-official`` imports
the release's ``train_separate/{t}_{d}_train_pseudo_{source}_{h}.pth`` files as sources
``template`` / ``relation`` / ``caption`` (split ``train_separate``), and its union file
``{d}_train_pseudo.pth`` as split ``train_pseudo`` (source ``pseudo``, or the source the user
names with ``--union-source``: the single-source release's union file *is* the template
source). The dataset's ``manifest.json`` lists them under ``pseudo_sources``::

    "pseudo_sources": {
      "template": {"split": "train_separate", "files": ["1_unc_train_pseudo_template_0_5.pth"],
                   "rows": 6, "position": 1, "threshold": 0.5},
      ...
    }

``rows`` counts the accepted rows (after validation). The union file is kept apart from the
per-source files (its own split), so no label is counted twice, and a union file that is not a
named source (``pseudo``) is not a curriculum source.

The pipeline's ``pseudo:<s>`` stage takes the rows of an imported source ``s`` as they are
(:func:`source_rows`) instead of generating them from record tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage

MANIFEST_KEY = "pseudo_sources"
UNION_SOURCE = "pseudo"  # source of a union file that names no single source
SPLITS = ("train_pseudo", "train_separate")  # the splits imported pseudo-labels live in


def pseudo_sources(root: str, manifest: dict | None = None, **storage_options: Any) -> dict[str, dict]:
    """name -> ``{split, files, rows, position, threshold}`` of the imported sources of the
    dataset at ``root`` (``{}`` when it has none). ``manifest``: the dataset's manifest when
    the caller has read it already."""
    if manifest is None:
        manifest = storage.read_json(storage.join(root, "manifest.json"), **storage_options)
    found = manifest.get(MANIFEST_KEY) or {}
    return {name: dict(entry) for name, entry in found.items() if name != UNION_SOURCE}


def source_rows(root: str, name: str, split: str | None = None, **storage_options: Any) -> pa.Table:
    """Every samples row of imported source ``name`` (all columns the samples table has, so
    official files' ``box_raw`` / ``aux`` survive for an export), in table order. ``split``:
    the source's split when the caller has its manifest entry (else read from the manifest).
    Raises ``KeyError`` naming the sources there are when the dataset has no such source."""
    if split is None:
        sources = pseudo_sources(root, **storage_options)
        if name not in sources:
            raise KeyError(f"{root} has no imported pseudo-label source {name!r} "
                           f"(imported: {', '.join(sorted(sources)) or 'none'})")
        split = sources[name]["split"]
    expr = (pc.field("split") == split) & (pc.field("source") == name)
    return storage.read_table(storage.join(root, "samples"), filter=expr, **storage_options)


def manifest_entries(files: list[dict], samples: pa.Table) -> dict[str, dict]:
    """The ``pseudo_sources`` entry of a manifest: per source of the ``files`` whose split is
    one of :data:`SPLITS` (each ``{name, split, source, position, threshold}``), its split,
    file names, accepted rows in ``samples`` (that split, that source), and the MSA position
    and threshold its files give (None where they do not say or disagree)."""
    rows = Counter(zip(samples.column("split").to_pylist(), samples.column("source").to_pylist()))
    out: dict[str, dict] = {}
    for f in files:
        if f["split"] not in SPLITS:
            continue
        entry = out.setdefault(f["source"], dict(
            split=f["split"], files=[], rows=rows[(f["split"], f["source"])],
            position=f.get("position"), threshold=f.get("threshold")))
        entry["files"].append(f["name"])
        for k in ("position", "threshold"):
            if entry[k] != f.get(k):
                entry[k] = None
    return out
