"""Reliability subsets as official CLIP-VG split files (method doc §5, "official scoring script").

The official ``eval_for_reliability_distribution.py`` writes, per dataset key ``{d}``:

* ``{d}_train_pseudo_refine_{t}.pth`` for t in 0.0, 0.1, ..., 0.9: the samples with
  reliability **r > t** (strict; ``0.3`` -> ``refine_0_3``);
* ``{d}_train_pseudo_refine_1_0.pth``: the samples with r == 1.0.

Each entry is a valid split entry of the key (:mod:`clipvg.sources.official.export`), so a file can
stand in for ``{d}_train_pseudo.pth``; phrases are written back lower-cased with the prompt
template applied, as the official script does. Samples without a reliability (unreadable
image) are in no file. Pure: no Ray, no model.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from clipvg.curriculum.selection import aligned_scores, keep_mask
from clipvg.data import storage
from clipvg.sources.official.formats import box_format, refine_file, threshold_tag
from clipvg.sources.official.export import export_official
from clipvg.data.text import prepare_text

REFINE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def refined_subsets(samples: pa.Table, scores: pa.Table,
                    thresholds: Sequence[float] = REFINE_THRESHOLDS) -> dict[str, pa.Table]:
    """tag -> the rows of ``samples`` (in table order) of each official refine file: r > t
    per threshold, and r == 1.0 under tag "1_0". Every sample needs exactly one score row."""
    aligned = aligned_scores(samples, scores, "export_refined")
    out = {threshold_tag(t): samples.filter(keep_mask(aligned, float(t))) for t in thresholds}
    r = aligned.column("reliability").to_numpy(zero_copy_only=False).astype(np.float64)
    out[threshold_tag(1.0)] = samples.filter(pa.array(np.nan_to_num(r, nan=-1.0) == 1.0))
    return out


def _official_texts(table: pa.Table, template: str | None) -> pa.Table:
    if template is None:
        return table
    texts = [prepare_text(t, template) for t in table.column("text").to_pylist()]
    return table.set_column(table.column_names.index("text"), "text", pa.array(texts, pa.string()))


def export_refined(samples: pa.Table, scores: pa.Table, out_dir: str, dataset_key: str,
                   thresholds: Sequence[float] = REFINE_THRESHOLDS, *, prompt_template: str | None = "{}",
                   **storage_options: Any) -> dict[str, int]:
    """Write the official refine files of ``samples`` under ``out_dir`` (any storage URI).

    Args:
        samples: samples-schema rows of one pseudo-label source (the scored table).
        scores: their scores table (``sample_id``, ``reliability``; one row per sample).
        dataset_key: official key (unc, unc+, gref, gref_umd, referit, flickr): decides the
            entry layout and box format ([x, y, w, h] for the COCO family).
        thresholds: the ``refine_{t}`` files to write (r > t); ``refine_1_0`` is always written.
        prompt_template: phrases are written as ``prepare_text(text, template)`` (lower-cased,
            template applied); None writes them as stored.
    Returns:
        file URI -> number of entries.
    """
    box_format(dataset_key)  # a bad key fails before anything is written
    written = {}
    for tag, rows in refined_subsets(samples, scores, thresholds).items():
        uri = storage.join(out_dir, refine_file(dataset_key, tag))
        written[uri] = export_official(_official_texts(rows, prompt_template), dataset_key, uri,
                                       **storage_options)
    return written
