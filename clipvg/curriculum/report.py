"""The pipeline's report: ``report.md``, ``report.json`` and figures under ``<run>/report/``.

``report.json`` holds Acc@0.5 per split (``val`` = the best validation accuracy, then every
held-out split) for each compared method under ``raw_template`` (w/o curriculum: the whole
first source), ``ssa``, ``raw_union`` (w/o MSA: every source whole), ``msa`` and
``full_supervised`` (the ground-truth train split), plus the chosen thresholds, the source
order, what was searched, and the margins the curriculum is judged by. ``shuffled_text``
holds, per method and held-out split, the Acc@0.5 of the shuffled-text control (the final
model shown texts of other images, :mod:`clipvg.engine.control`), read by the search from its history.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clipvg.config import Config  # noqa: E402
from clipvg.curriculum.plots import HISTOGRAM_JSON, plot_histogram, plot_sr_cr_matrix  # noqa: E402
from clipvg.data import storage  # noqa: E402
from clipvg.engine.examples import prediction_examples  # noqa: E402
from clipvg.model.io import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from clipvg.viz import plot_prediction_grid  # noqa: E402

@dataclass(frozen=True)
class PipelineResult:
    """What the report reads of a pipeline run (built by ``clipvg.distributed.pipeline``).

    ``outputs`` maps each stage name (``world``, ``pseudo:<s>``, ``measurers``, ``scores:<m>``,
    ``ssa``, ``msa``, ``finals``) to the outputs its manifest recorded; ``options`` are the
    storage options every URI is read with.
    """

    run_dir: str
    cfg: Config  # the run's config (paths resolved)
    base: Config  # the config every training started from (data.uri = the world)
    sources: list[str]
    outputs: dict[str, dict]
    options: dict[str, Any]
    trial_epochs: int
    measurer_epochs: int
    final_epochs: int

    def scores_uri(self, measurer: str, source: str) -> str:
        """The scores table of ``source`` scored by ``measurer``'s model."""
        return self.outputs[f"scores:{measurer}"][source]["uri"]

    def uri(self, *parts: str) -> str:
        return storage.join(self.run_dir, *parts)


METHODS = {  # key -> row label (paper Tables I/II)
    "raw_template": "w/o curriculum (whole template source)",
    "ssa": "SSA (single source)",
    "raw_union": "w/o MSA (union of whole sources)",
    "msa": "MSA (multi-source)",
    "full_supervised": "fully supervised (ground-truth labels)",
}


def accuracy_table(finals: dict) -> dict:
    """method -> {"val": acc, <split>: acc, ...} of every method the finals trained (a method
    left out, e.g. fully supervised without a ground-truth train split, has no entry)."""
    return {m: {"val": finals[m]["val_acc"], **finals[m]["test"]} for m in METHODS if m in finals}


def shuffled_accuracy_table(finals: dict) -> dict:
    """method -> {split: Acc@0.5 of the shuffled-text control} of each final model, as the
    search read it from the model's ``history.json`` (:mod:`clipvg.engine.control`); a model
    trained before the control existed, or never trained (an empty pool), gets ``{}`` ("-")."""
    return {m: dict(finals[m].get("test_shuffled_text") or {}) for m in METHODS if m in finals}


def accuracy_lines(acc: dict, shuffled: dict, test_splits: list[str]) -> list[str]:
    """The markdown accuracy table: val, then each held-out split followed by the same model's
    accuracy with shuffled texts (a model that reads the text falls towards the random-object
    baseline there; "-": not measured)."""
    columns = ["val"] + [c for s in test_splits for c in (s, f"{s}, shuffled text")]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for m, label in METHODS.items():
        if m not in acc:
            continue
        cells = [_pct(acc[m].get("val"))]
        for s in test_splits:
            cells += [_pct(acc[m].get(s)), _pct(shuffled[m][s]) if s in shuffled[m] else "-"]
        lines.append(f"| {label} (`{m}`) | " + " | ".join(cells) + " |")
    return lines


def margins(acc: dict, split: str) -> dict:
    def diff(a, b):
        x, y = acc[a].get(split), acc[b].get(split)
        return None if x is None or y is None else round(x - y, 4)
    return {"split": split, "ssa_minus_raw_template": diff("ssa", "raw_template"),
            "msa_minus_raw_union": diff("msa", "raw_union")}


def plot_threshold_curves(ssa: dict, msa: dict, path: Path) -> Path:
    """Validation Acc@0.5 vs reliability threshold (paper Fig. 3b), SSA and each MSA step."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    curves = [(f"SSA ({ssa['source']})", ssa["curve"], ssa["h"])]
    curves += [(f"MSA step {i}: +{s['source']} by {s['measurer']}", s["curve"], s["h"])
               for i, s in enumerate(msa["steps"], 1)]
    for label, curve, h in curves:
        pts = [(p["h"], p["val_acc"]) for p in curve if p["val_acc"] is not None]
        if not pts:
            continue
        line, = ax.plot(*zip(*pts), marker="o", label=label)
        chosen = [a for x, a in pts if x == h]
        if chosen:
            ax.plot([h], chosen, marker="*", markersize=14, color=line.get_color())
    ax.set_xlabel("reliability threshold h (train on samples with r > h)")
    ax.set_ylabel("validation Acc@0.5")
    ax.set_title("performance vs threshold (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_methods(acc: dict, split: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    colours = {"raw_template": "#999", "ssa": "#4a8", "raw_union": "#999", "msa": "#4a8", "full_supervised": "#48c"}
    names = [m for m in METHODS if m in acc]
    values = [acc[m].get(split) or 0.0 for m in names]
    bars = ax.barh(names[::-1], values[::-1], color=[colours[m] for m in names][::-1])
    for bar, v in zip(bars, values[::-1]):
        ax.text(bar.get_width() + 0.005, bar.get_y() + bar.get_height() / 2, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel(f"held-out {split} Acc@0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histograms(pipeline: PipelineResult) -> dict:
    """(measurer, source) -> the histogram record the scores stage wrote next to its table."""
    return {(m, s): storage.read_json(storage.join(pipeline.scores_uri(m, s), HISTOGRAM_JSON), **pipeline.options)
            for m in pipeline.sources for s in pipeline.sources}


def _figures(pipeline: PipelineResult, acc: dict, split: str, out: Path) -> dict[str, str]:
    o = pipeline.outputs
    hists = _histograms(pipeline)  # written by the scores stages: not recomputed from the tables
    figs = {"methods": plot_methods(acc, split, out / "methods.png"),
            "thresholds": plot_threshold_curves(o["ssa"], o["msa"], out / "threshold_curves.png"),
            "sr_cr": Path(plot_sr_cr_matrix(hists, str(out / "sr_cr_histograms.png")))}
    first = pipeline.sources[0]
    figs["ssa_histogram"] = Path(plot_histogram(
        hists[(first, first)], str(out / "reliability_ssa.png"),
        title=f"SSA: {first} scored by its own measurer (chosen h = {o['ssa']['h']:g})"))
    figs["predictions"] = _prediction_grid(pipeline, o["finals"]["msa"]["run_dir"], out / "predictions_msa.png")
    return {k: str(v.name) for k, v in figs.items()}


def _prediction_grid(pipeline: PipelineResult, run_dir: str, path: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="clipvg-report-") as tmp:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            data = storage.read_bytes(storage.join(run_dir, "best", name), **pipeline.options)
            (Path(tmp) / name).write_bytes(data)
        items = prediction_examples(pipeline.base, tmp, n=12, **pipeline.options)
    return plot_prediction_grid(items, path)


def _markdown(pipeline: PipelineResult, acc: dict, report: dict, figs: dict) -> str:
    o, c = pipeline.outputs, pipeline.cfg.curriculum
    lines = [f"# CLIP-VG curriculum report: `{pipeline.run_dir}`", "",
             f"World / dataset: `{o['world']['uri']}`. Sources: {', '.join(pipeline.sources)}. "
             f"Pseudo-labels: " + ", ".join(f"{s} {o[f'pseudo:{s}']['rows']}" for s in pipeline.sources) + ".",
             "", "## Accuracy (Acc@0.5; val = best validation epoch, then held-out splits)", "",
             *accuracy_lines(acc, report["shuffled_text"], pipeline.cfg.data.test_splits), "",
             "Shuffled text: the same held-out samples, each shown the expression of another image "
             "(a model that reads the text falls to or below the random-object baseline)."]
    for m, why in report.get("left_out", {}).items():
        lines += ["", f"Left out: {METHODS[m]} (`{m}`): {why}."]
    lines += ["", "Final models (a run folder each; `clipvg evaluate --checkpoint <folder>`): "
              + ", ".join(f"`{m}` {d}" for m, d in report["models"].items()) + "."]
    mg = report["margins"]
    lines += ["", f"Margins on `{mg['split']}`: SSA - w/o curriculum = {_pts(mg['ssa_minus_raw_template'])}, "
              f"MSA - w/o MSA = {_pts(mg['msa_minus_raw_union'])} (points).", "",
              f"![methods]({figs['methods']})", "", "## What was searched", "",
              f"* SSA on `{o['ssa']['source']}` with its own measurer: thresholds {c.thresholds} "
              f"({c.search}); chosen h = {o['ssa']['h']:g}.",
              f"* MSA: h0 = {c.h0:g} for measurer selection, the same threshold grid per source; source order: "
              f"{c.source_order} -> {' > '.join(o['msa']['order'])}; thresholds "
              + ", ".join(f"{s} {h:g}" for s, h in o["msa"]["thresholds"].items()) + ".",
              f"* Training per search trial: {pipeline.trial_epochs} epochs; reliability measurers: "
              f"{pipeline.measurer_epochs}; final and baseline models: {pipeline.final_epochs}; "
              f"early stopping: {c.early_stopping}.", ""]
    if o["msa"]["order_accs"]:
        lines += ["| source order | final val Acc@0.5 |", "|---|---|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in o["msa"]["order_accs"].items()] + [""]
    lines += [f"Measurer selection: {c.measurer_selection}.", "",
              "| MSA step | source | measurer (val acc at h0) | chosen | h |", "|---|---|---|---|---|"]
    for i, s in enumerate(o["msa"]["steps"], 1):
        accs = ", ".join(f"{m} {_pct(a)}" for m, a in s["measurer_accs"].items())
        lines.append(f"| {i} | {s['source']} | {accs} | {s['measurer']} | {s['h']:g} |")
    lines += ["", f"![threshold curves]({figs['thresholds']})", "", "## Reliability", "",
              f"![SSA histogram]({figs['ssa_histogram']})", "",
              "SR (diagonal: a source scored by its own measurer) and CR (off-diagonal) histograms:", "",
              f"![SR/CR]({figs['sr_cr']})", "", "## Held-out predictions of the MSA model", "",
              f"![predictions]({figs['predictions']})", ""]
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _pts(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}"


def write_report(pipeline: PipelineResult) -> dict:
    """Write the report to ``<run>/report/``; returns the report stage's outputs."""
    o = pipeline.outputs
    split = pipeline.cfg.data.test_splits[0]
    acc = accuracy_table(o["finals"])
    # its own key: the methods' entries keep their {val, <split>} shape (golden pipeline test)
    shuffled = shuffled_accuracy_table(o["finals"])
    left_out = o["finals"].get("left_out", {})
    report = {**acc, "shuffled_text": shuffled, **({"left_out": left_out} if left_out else {}),
              "thresholds": {"ssa": o["ssa"]["h"], "msa": o["msa"]["thresholds"]},
              "source_order": o["msa"]["order"], "margins": margins(acc, split),
              "searched": {"thresholds": pipeline.cfg.curriculum.thresholds,
                           "search": pipeline.cfg.curriculum.search, "h0": pipeline.cfg.curriculum.h0,
                           "source_order": pipeline.cfg.curriculum.source_order,
                           "order_accs": o["msa"]["order_accs"]},
              "ssa_curve": o["ssa"]["curve"], "msa_steps": o["msa"]["steps"],
              "measurers": o["measurers"], "pseudo_rows": {s: o[f"pseudo:{s}"]["rows"] for s in pipeline.sources},
              "models": {m: o["finals"][m]["run_dir"] for m in acc}}  # for clipvg evaluate / predict
    out_uri = pipeline.uri("report")
    with tempfile.TemporaryDirectory(prefix="clipvg-report-") as tmp:
        figs = _figures(pipeline, acc, split, Path(tmp))
        (Path(tmp) / "report.md").write_text(_markdown(pipeline, acc, report, figs))
        report["figures"] = figs
        for f in Path(tmp).iterdir():
            storage.write_bytes(f.read_bytes(), storage.join(out_uri, f.name), **pipeline.options)
    storage.write_json(report, storage.join(out_uri, "report.json"), **pipeline.options)
    mg = report["margins"]
    summary = "\n".join([f"{METHODS[m]:<42} " + "  ".join(f"{s} {_pct(v)}" for s, v in acc[m].items())
                         + "".join(f"  {s} shuffled text {_pct(v)}" for s, v in shuffled[m].items())
                         for m in METHODS if m in acc] + [
        f"{METHODS[m]:<42} left out: {why}" for m, why in left_out.items()] + [
        f"SSA - w/o curriculum: {_pts(mg['ssa_minus_raw_template'])} points; "
        f"MSA - w/o MSA: {_pts(mg['msa_minus_raw_union'])} points ({split})"])
    return {"uri": out_uri, "markdown": storage.join(out_uri, "report.md"),
            "json": storage.join(out_uri, "report.json"), "summary": summary}
