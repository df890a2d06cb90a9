"""``clipvg compare``: several runs side by side, as a Markdown table and learning curves.

Reads each run's ``history.json`` (``clipvg train-local`` or ``clipvg train``) and writes under
``--out``:

* ``compare.md`` / ``compare.json``: per run the training samples, samples/s, wall-clock
  seconds of training + validation, held-out Acc@0.5 overall and per expression type, the
  shuffled-text control and, for the synthetic world, the random-object baseline;
* ``curves.png``: validation Acc@0.5 against training samples, one panel per expression type,
  with each run's shuffled-text control dotted.

Existing outputs under ``--out`` are refused (before any history is read) unless
``--overwrite``.

This is how the ablations of docs/pretraining.md were tabulated.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402

from clipvg.data import storage  # noqa: E402

TYPES = ("attribute", "spatial", "relational")
OUTPUTS = ("compare.md", "compare.json", "curves.png")


def epoch_samples(epoch: dict) -> int:
    """Training samples of an epoch record (older records: rate x elapsed, which is how the
    rate was defined there)."""
    if "train_samples" in epoch:
        return int(epoch["train_samples"])
    return round(epoch.get("train_samples_per_s", 0.0) * epoch.get("elapsed_s", 0.0))


def run_row(name: str, history: dict, split: str = "test") -> dict:
    """One table row from a run's history: what was trained, and how well it reads the text."""
    epochs = history.get("epochs", [])
    samples = sum(epoch_samples(e) for e in epochs)
    seconds = sum(e.get("elapsed_s", 0.0) for e in epochs)
    test = history.get("test", {}).get(split, {})
    shuffled = test.get("shuffled_text") or {}
    baseline = (history.get("random_object_baseline") or {}).get(split) or {}
    return {"run": name, "epochs": len(epochs), "samples": samples,
            "samples_per_s": samples / seconds if seconds else None, "seconds": seconds,
            "best_epoch": history.get("best_epoch"), "acc": test.get("acc"),
            "per_type": test.get("per_type", {}), "shuffled_acc": shuffled.get("acc"),
            "shuffled_per_type": shuffled.get("per_type", {}), "baseline": baseline.get("acc"),
            "baseline_per_type": baseline.get("per_type", {})}


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (accuracies as fractions, 3 digits)."""
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    head = ("| run | samples | samples/s | s | Acc@0.5 | " + " | ".join(TYPES)
            + " | shuffled text | random object |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        types = " | ".join(f(r["per_type"].get(t)) for t in TYPES)
        lines.append(f"| {r['run']} | {r['samples']:,} | {f(r['samples_per_s'], 0)} | "
                     f"{f(r['seconds'], 0)} | **{f(r['acc'])}** | {types} | "
                     f"{f(r['shuffled_acc'])} | {f(r['baseline'])} |")
    return "\n".join(lines) + "\n"


def plot_curves(histories: dict[str, dict], path: Path) -> Path:
    """Validation Acc@0.5 per expression type against cumulative training samples."""
    fig, axes = plt.subplots(1, 1 + len(TYPES), figsize=(4 * (1 + len(TYPES)), 3.6), sharey=True)
    for (name, history), color in zip(histories.items(), plt.cm.tab10.colors * 3):
        epochs = history.get("epochs", [])
        xs, total = [], 0
        for e in epochs:
            total += epoch_samples(e)
            xs.append(total / 1000)
        for ax, key in zip(axes, ("all", *TYPES)):
            val = [e["val"]["acc"] if key == "all" else e["val"]["per_type"].get(key) for e in epochs]
            ax.plot(xs, val, ".-", color=color, label=name)
            control = [(e["val"].get("shuffled_text") or {}) for e in epochs]
            ctrl = [c.get("acc") if key == "all" else (c.get("per_type") or {}).get(key) for c in control]
            if any(v is not None for v in ctrl):
                ax.plot(xs, [float("nan") if v is None else v for v in ctrl], ":", color=color)
    for ax, key in zip(axes, ("all", *TYPES)):
        ax.set(title=key, xlabel="training samples (k)", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val Acc@0.5 (dotted: shuffled text)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", help="run folders (local or URI) holding history.json; "
                        "NAME=FOLDER names a row")
    parser.add_argument("--out", required=True, help="local folder for compare.md/json, curves.png")
    parser.add_argument("--split", default="test", help="held-out split of the table (default test)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace compare.md/json and curves.png already in --out (default: refuse)")


def run(args) -> int:
    storage.refuse_existing(args.out, OUTPUTS, overwrite=args.overwrite)
    histories: dict[str, dict] = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        folder = folder if sep else name
        name = name if sep else folder.rstrip("/").rsplit("/", 1)[-1]
        histories[name] = json.loads(storage.read_bytes(storage.join(folder, "history.json")))
    rows = [run_row(name, h, args.split) for name, h in histories.items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown_table(rows))
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    plot_curves(histories, out / "curves.png")
    print(markdown_table(rows) + f"\nwritten: {out}/compare.md, compare.json, curves.png")
    return 0
