"""Reliability histograms (method doc §5, the paper's Fig. 5): data export and pictures.

A histogram record (``histogram.json``)::

    {"bins": B, "rule": "bin k holds r in (k/B, (k+1)/B]", "counts": [B ints],
     "zero": #(r == 0), "null": #(r is null: unreadable), "n": #rows,
     "measurer": ..., "source": ...}

``r == 0`` falls in no bin, as in the paper (it is the ``zero`` count). Pictures are rendered
headless (matplotlib Agg, as :mod:`clipvg.viz`) to PNG bytes and written through
:mod:`clipvg.data.storage`, so every path may be a local path or an ``s3://`` URI.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pyarrow as pa

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402

from clipvg.curriculum.selection import histogram, zero_count  # noqa: E402
from clipvg.data import storage  # noqa: E402

HISTOGRAM_JSON, HISTOGRAM_PNG = "histogram.json", "histogram.png"
SR_COLOR, CR_COLOR = "tab:green", "tab:blue"


def _unique(scores: pa.Table, column: str) -> str | None:
    if column not in scores.column_names:
        return None
    values = set(scores.column(column).to_pylist())
    return values.pop() if len(values) == 1 else None


def histogram_record(scores: pa.Table, bins: int = 1000) -> dict:
    """The histogram record of a scores table (see module doc)."""
    counts, _ = histogram(scores, bins)
    return {"bins": bins, "rule": f"bin k holds r in (k/{bins}, (k+1)/{bins}]",
            "counts": counts.tolist(), "zero": zero_count(scores),
            "null": scores.column("reliability").null_count, "n": scores.num_rows,
            "measurer": _unique(scores, "measurer"), "source": _unique(scores, "source")}


def _counts(h: Any) -> np.ndarray:
    return np.asarray(h["counts"] if isinstance(h, Mapping) else h, np.int64)


def _draw(ax, counts: np.ndarray, color: str) -> None:
    """A step histogram of ``counts`` over (0, 1] on ``ax``."""
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    ax.stairs(counts, edges, fill=True, color=color, alpha=0.8)
    ax.set_xlim(0, 1)


def _save(fig, path: str, **storage_options: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(buffer.getvalue(), str(path), **storage_options)
    return str(path)


def plot_histogram(record: dict, path: str, title: str | None = None, **storage_options: Any) -> str:
    """One reliability histogram (a :func:`histogram_record`) as a PNG at ``path``."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    _draw(ax, _counts(record), SR_COLOR if record.get("measurer") == record.get("source") else CR_COLOR)
    who = f"measurer {record.get('measurer')} on source {record.get('source')}"
    ax.set(xlabel="reliability r = IoU(clamp(M(I, T)), b)", ylabel=f"samples per bin (1/{record['bins']})",
           title=title or who)
    ax.text(0.02, 0.95, f"n = {record['n']}\nr = 0: {record['zero']}\nunreadable: {record['null']}",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, **storage_options)


def score_histograms(scores: pa.Table, out_uri: str, bins: int = 1000, title: str | None = None,
                     **storage_options: Any) -> dict:
    """Write ``histogram.json`` and ``histogram.png`` into the scores table's folder
    ``out_uri`` (Parquet readers read only ``*.parquet`` parts there). Returns
    ``{"json": uri, "png": uri, "record": record}``."""
    record = histogram_record(scores, bins)
    json_uri, png_uri = storage.join(out_uri, HISTOGRAM_JSON), storage.join(out_uri, HISTOGRAM_PNG)
    storage.write_json(record, json_uri, **storage_options)
    plot_histogram(record, png_uri, title, **storage_options)
    return {"json": json_uri, "png": png_uri, "record": record}


def _order(keys: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Measurers (rows) and sources (columns) in order of first appearance; a measurer named
    like a source is placed so that it lands on the diagonal where possible."""
    measurers = list(dict.fromkeys(m for m, _ in keys))
    sources = list(dict.fromkeys(s for _, s in keys))
    paired = [m for m in measurers if m in sources]
    sources = sorted(sources, key=lambda s: paired.index(s) if s in paired else len(paired))
    measurers = sorted(measurers, key=lambda m: paired.index(m) if m in paired else len(paired))
    return measurers, sources


def plot_sr_cr_matrix(hists: Mapping[tuple[str, str], Any], path: str, title: str | None = None,
                      **storage_options: Any) -> str:
    """The paper's Fig. 5: a grid of reliability histograms, rows = measurers ``M_i``,
    columns = sources ``j``; ``H_ij`` is measurer i scoring source j. Source-specific
    reliability (SR: a source scored by its own measurer, i.e. measurer name == source name)
    is drawn green with a thick frame, cross-source reliability (CR) blue. ``hists`` maps
    ``(measurer, source)`` to counts (a sequence, or a :func:`histogram_record`)."""
    if not hists:
        raise ValueError("no histograms to plot")
    measurers, sources = _order(list(hists))
    fig, axes = plt.subplots(len(measurers), len(sources), squeeze=False,
                             figsize=(3.2 * len(sources), 2.4 * len(measurers)))
    for i, m in enumerate(measurers):
        for j, s in enumerate(sources):
            ax = axes[i][j]
            sr = m == s
            if (m, s) in hists:
                _draw(ax, _counts(hists[(m, s)]), SR_COLOR if sr else CR_COLOR)
            else:
                ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(f"{'SR' if sr else 'CR'}  H({m} -> {s})", fontsize=9)
            for side in ax.spines.values():
                side.set(linewidth=2.5 if sr else 0.8, edgecolor=SR_COLOR if sr else "black")
            ax.tick_params(labelsize=7)
            if i == len(measurers) - 1:
                ax.set_xlabel(f"reliability ({s})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"measurer {m}", fontsize=8)
    fig.suptitle(title or "Reliability histograms: rows = measurers, columns = sources "
                          "(SR diagonal, CR off-diagonal)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, **storage_options)
