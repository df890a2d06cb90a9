"""clipvg samples -> an official CLIP-VG split file (``torch.save`` of a list of tuples).

Per key (method doc §1.2): ``flickr`` entries are ``(image, [x1, y1, x2, y2], phrase)``; every
other key's are ``(image, aux_1, box, expression, aux_2)`` with ``[x, y, w, h]`` boxes for the
COCO family and ``[x1, y1, x2, y2]`` for referit. Rows imported by
:func:`clipvg.sources.official.importer.import_official` carry ``box_raw`` / ``box_format`` /
``aux`` and come back with the file's numbers and aux fields (JSON lists where the file had tuples);
other rows (pseudo labels, synthetic data) are converted from ``box`` (x0, y0, x1, y1 float32)
and get ``'useless placeholder'`` aux fields, as the official pseudo-label files do.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage
from clipvg.sources.official.formats import PLACEHOLDER, box_format


def _convert(box: list[float], src: str, dst: str) -> list[float]:
    """Convert a box between the xyxy and xywh conventions (same numbers if equal)."""
    if src == dst:
        return list(box)
    x, y, a, b = box
    return [x, y, a - x, b - y] if dst == "xywh" else [x, y, x + a, y + b]


def _entry_box(row: dict, fmt: str) -> list[float]:
    raw, raw_fmt = row.get("box_raw"), row.get("box_format")
    if raw is not None and raw_fmt in ("xywh", "xyxy") and len(raw) == 4:
        return _convert([float(v) for v in raw], raw_fmt, fmt)
    # float32 -> Python float is exact; no rounding, so a re-import gives the same float32 box
    return _convert([float(v) for v in row["box"]], "xyxy", fmt)


def _entry_text(value: Any) -> str | bytes:
    if isinstance(value, bytes):  # a binary text column (an import before validation)
        try:
            return value.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return value  # the file held bytes: give them back as they were
    return value


def _entry_aux(row: dict) -> tuple[Any, Any]:
    aux = row.get("aux")
    if aux is None:
        return PLACEHOLDER, PLACEHOLDER
    aux_1, aux_2 = json.loads(aux)
    return aux_1, aux_2


def official_entries(samples: pa.Table | list[dict], key: str) -> list[tuple]:
    """The rows of ``samples`` (a table, or its rows as dicts) as official entries of ``key``
    (in table order)."""
    fmt = box_format(key)
    entries = []
    rows = samples if isinstance(samples, list) else samples.to_pylist()
    for i, row in enumerate(rows):
        try:
            image, text, box = row["image_id"], _entry_text(row["text"]), _entry_box(row, fmt)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"samples row {i} ({row.get('sample_id')}): cannot export: "
                             f"{e!r}") from None
        if key == "flickr":
            entries.append((image, box, text))
        else:
            aux_1, aux_2 = _entry_aux(row)
            entries.append((image, aux_1, box, text, aux_2))
    return entries


def export_official(samples: pa.Table | list[dict], key: str, path_or_uri: str,
                    **storage_options: Any) -> int:
    """Write ``samples`` as an official split file for ``key`` with ``torch.save`` (the
    official code reads it with ``torch.load``). Returns the number of entries written."""
    # deferred: loads torch; paid only when this runs, not on import
    import torch

    entries = official_entries(samples, key)
    buffer = io.BytesIO()
    torch.save(entries, buffer)
    storage.write_bytes(buffer.getvalue(), path_or_uri, **storage_options)
    return len(entries)


def export_split(uri: str, key: str, split: str, out_path: str, *, source: str | None = None,
                 sample_ids: Iterable[str] | None = None, **storage_options: Any) -> int:
    """Export one split of the clipvg dataset at ``uri`` to ``out_path`` in ``key``'s format.

    ``source`` keeps only rows of that source (gt, pseudo, template, ...); ``sample_ids`` keeps
    only those samples (e.g. a curriculum's selection, written as
    ``{key}_train_pseudo_refine_*.pth``; ids not in the split are an error). Row order is the
    table's. Returns the number of entries written.
    """
    box_format(key)  # a bad key fails before any read
    where = storage.join(uri, "samples")
    expr = pc.field("split") == split
    if source is not None:
        expr = expr & (pc.field("source") == source)
    wanted = None
    if sample_ids is not None:
        wanted = list(dict.fromkeys(sample_ids))
        expr = expr & pc.field("sample_id").isin(pa.array(wanted, pa.string()))
    table = storage.read_table(where, filter=expr, **storage_options)
    what = f"split {split!r}" + (f", source {source!r}" if source else "")
    if wanted is not None:
        missing = set(wanted) - set(table.column("sample_id").to_pylist())
        if missing:
            raise ValueError(f"{len(missing)} sample id(s) not in {what} of {where}: "
                             f"{sorted(missing)[:5]}")
    elif table.num_rows == 0:
        splits = storage.read_table(where, columns=["split"], **storage_options)
        found = sorted(pc.unique(splits.column("split")).to_pylist())
        raise ValueError(f"no samples of {what} in {where}; splits there: {found}")
    return export_official(table, key, out_path, **storage_options)


__all__ = ["export_official", "export_split", "official_entries"]
