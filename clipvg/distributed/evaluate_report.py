"""What ``clipvg evaluate`` writes under ``--out`` (see :mod:`clipvg.distributed.evaluate`):

* ``predictions/``  Parquet, one row per sample of the evaluated splits (PREDICTIONS_SCHEMA)
* ``metrics.md``    the Markdown table of metrics.json (Acc@0.5 in %)
* ``worst.png``     the worst evaluated predictions: image, expression, predicted box (red) and
                    true box (green), both ``x0, y0, x1, y1`` pixels of the original image
* ``metrics.json``  written last: its presence means the result is complete

Every write goes through :mod:`clipvg.data.storage` with the run's storage options (S3 too).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def markdown(result: dict) -> str:
    """metrics.json as a Markdown table: a row per split and one for all splits."""
    rows = {**result["splits"], "all": result["overall"]}
    types = sorted({t for s in rows.values() for t in s["per_type"]})
    head = ["split", "samples", "evaluated", "failed", "Acc@0.5", "shuffled text", *types]
    lines = ["# clipvg evaluate\n", f"checkpoint `{result['checkpoint']}`, data `{result['data']}`\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in rows.items():
        cells = [name, s["rows"], s["total"], s["failed"], _pct(s["acc"]), _pct(s["shuffled_text"]["acc"]),
                 *(_pct(s["per_type"].get(t)) for t in types)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Acc@0.5 in %: the official evaluation IoU (prediction clamped to the canvas) >= 0.5, "
              "over the rows evaluated; columns after 'shuffled text' are per expression type. "
              "Shuffled text: the same images and boxes, each expression replaced by one of another "
              "image (a model that reads the text falls towards the random-object rate). "
              "Failed rows (unreadable image, invalid box or text) are listed in metrics.json."]
    return "\n".join(lines) + "\n"


def worst(pred: pa.Table, n: int) -> list[dict]:
    """The ``n`` evaluated rows of lowest IoU (ties: table order)."""
    ok = pred.filter(pc.is_valid(pred.column("iou")))
    if n <= 0 or ok.num_rows == 0:
        return []
    iou = ok.column("iou").to_pylist()
    order = sorted(range(len(iou)), key=lambda i: iou[i])[:n]  # stable: ties keep table order
    return ok.take(pa.array(order, pa.int64())).to_pylist()


def _images(root: str, image_ids: list[str], **storage_options: Any) -> dict:
    """image_id -> decoded RGB image (from a file or the table's bytes); unreadable ones left out."""
    # deferred: loads torch; paid only when this runs, not on import
    from clipvg.data.fanout import decode

    where = storage.join(root, "images")
    names = storage.table_schema(where, **storage_options).names
    columns = ["image_id"] + [c for c in ("uri", "bytes") if c in names]
    table = storage.read_table(where, columns=columns, filter=pc.field("image_id").isin(
        pa.array(image_ids, pa.string())), **storage_options).to_pylist()
    out = {}
    for row in table:
        try:
            data = row.get("bytes") or storage.read_bytes(storage.resolve(root, row["uri"]),
                                                          **storage_options)
            out[row["image_id"]] = decode(data)
        except Exception:  # noqa: BLE001 - a gallery picture is not worth failing the run
            continue
    return out


def gallery_png(pred: pa.Table, root: str, n: int, **storage_options: Any) -> bytes | None:
    """PNG bytes of the ``n`` worst predictions (None when nothing was evaluated)."""
    # deferred: loads matplotlib; paid only when this runs, not on import
    from clipvg.viz import plot_prediction_grid

    rows = worst(pred, n)
    images = _images(root, list(dict.fromkeys(r["image_id"] for r in rows)), **storage_options)
    items = [dict(image=images[r["image_id"]], text=f"[{r['split']}] {r['text']}", pred=r["pred_box"],
                  true=r["box"], iou=r["iou"]) for r in rows if r["image_id"] in images]
    if not items:
        return None
    with tempfile.TemporaryDirectory(prefix="clipvg-eval-") as tmp:
        path = plot_prediction_grid(items, Path(tmp) / "worst.png", columns=min(4, len(items)))
        return path.read_bytes()


def write_outputs(job, pred: pa.Table, result: dict, *, gallery: int = 12) -> None:
    """Write everything under ``job.out_uri``; metrics.json last. An earlier result there (only
    with ``job.overwrite``) loses its metrics.json first, so a run that fails midway never leaves
    old metrics next to new predictions."""
    out, options = job.out_uri, job.options
    storage.remove(storage.join(out, "metrics.json"), **options)
    storage.write_table(pred, storage.join(out, "predictions"), **options)
    storage.write_bytes(markdown(result).encode(), storage.join(out, "metrics.md"), **options)
    png = gallery_png(pred, job.data_uri, gallery, **options)
    if png is not None:
        storage.write_bytes(png, storage.join(out, "worst.png"), **options)
    else:
        storage.remove(storage.join(out, "worst.png"), **options)
    result["gallery"] = storage.join(out, "worst.png") if png is not None else None
    storage.write_json(result, storage.join(out, "metrics.json"), **options)
