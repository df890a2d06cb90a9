"""clipvg compare: the ablation table and curves from runs' history.json files."""

from __future__ import annotations

import json
from argparse import Namespace

from clipvg.cli import main
from clipvg.compare import epoch_samples, markdown_table, run, run_row
from listing import listing, refusal_line


def _history(acc: float, shuffled: float) -> dict:
    per_type = {"attribute": acc + 0.1, "spatial": acc, "relational": acc - 0.1}
    val = {"acc": acc, "per_type": per_type, "shuffled_text": {"acc": shuffled, "per_type": {}}}
    return {"epochs": [{"epoch": 1, "train_samples": 1000, "elapsed_s": 4.0, "val": val},
                       {"epoch": 2, "train_samples": 1000, "elapsed_s": 6.0, "val": val}],
            "best_epoch": 2,
            "test": {"test": {"acc": acc, "per_type": per_type,
                              "shuffled_text": {"acc": shuffled, "per_type": per_type}}},
            "random_object_baseline": {"test": {"acc": 0.25, "per_type": {}}}}


def test_row_counts_samples_and_reads_the_control_and_baseline():
    row = run_row("a", _history(0.6, 0.2))
    assert row["samples"] == 2000 and row["samples_per_s"] == 200.0 and row["seconds"] == 10.0
    assert (row["acc"], row["shuffled_acc"], row["baseline"]) == (0.6, 0.2, 0.25)
    assert "| a | 2,000 | 200 | 10 | **0.600** | 0.700 | 0.600 | 0.500 | 0.200 | 0.250 |" in markdown_table([row])


def test_older_epoch_records_count_samples_from_their_rate():
    assert epoch_samples({"train_samples_per_s": 250.0, "elapsed_s": 20.0}) == 5000


def test_command_writes_table_json_and_curves(tmp_path):
    for name, acc in (("x", 0.5), ("y", 0.3)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "history.json").write_text(json.dumps(_history(acc, 0.2)))
    out = tmp_path / "cmp"
    assert run(Namespace(runs=[f"first={tmp_path / 'x'}", str(tmp_path / "y")], out=str(out), split="test",
                         overwrite=False)) == 0
    rows = json.loads((out / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["first", "y"]
    assert (out / "curves.png").stat().st_size > 1000 and "| y |" in (out / "compare.md").read_text()


def test_command_refuses_existing_outputs_unless_overwrite(tmp_path, capsys):
    """An --out holding compare.md is refused (exit 2, one line naming it and --overwrite) and
    left byte for byte, mtimes included; --overwrite replaces the table. Planted defect that
    fails it: compare.run without its refuse_existing call (write_text replaced the files)."""
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "history.json").write_text(json.dumps(_history(0.5, 0.2)))
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.md").write_text("an earlier table\n")
    (out / "notes.txt").write_text("not ours\n")
    before = listing(out)
    assert main(["compare", str(tmp_path / "x"), "--out", str(out)]) == 2
    refusal_line(capsys.readouterr().err, "compare", out / "compare.md")
    assert listing(out) == before
    assert main(["compare", str(tmp_path / "x"), "--out", str(out), "--overwrite"]) == 0
    assert "| x |" in (out / "compare.md").read_text() and (out / "notes.txt").read_text() == "not ours\n"
