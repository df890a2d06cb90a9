"""The report's accuracy table with the shuffled-text column (clipvg.curriculum.report)."""

import json
from types import SimpleNamespace

from clipvg.curriculum.report import (METHODS, _final_histories, accuracy_lines, accuracy_table,
                                      shuffled_accuracy_table)


def _finals():
    return {m: {"val_acc": 0.5, "test": {"test": 0.8}} for m in METHODS}


def test_shuffled_accuracy_comes_from_each_final_models_history():
    histories = {m: {"test_shuffled_text": {"test": {"acc": 0.25, "per_type": {}}}} for m in METHODS}
    histories["ssa"] = {"test": {"test": {"acc": 0.8}}}  # written before the control existed
    histories["msa"] = None  # no run (an empty pool)
    histories["raw_union"] = {"test_shuffled_text": {"test": {"acc": None, "per_type": {}}}}  # one image
    table = shuffled_accuracy_table(histories)
    assert set(table) == set(METHODS)
    assert table["raw_template"] == table["full_supervised"] == {"test": 0.25}
    assert table["ssa"] == table["msa"] == {} and table["raw_union"] == {"test": None}


def test_the_table_has_a_shuffled_text_column_after_each_held_out_split():
    acc = accuracy_table(_finals())
    histories = {m: {"test_shuffled_text": {"test": {"acc": 0.25, "per_type": {}}}} for m in METHODS}
    histories["ssa"] = {}
    lines = accuracy_lines(acc, shuffled_accuracy_table(histories), ["test"])
    assert lines[0] == "| method | val | test | test, shuffled text |"
    assert lines[1] == "|---|---|---|---|"
    assert "| MSA (multi-source) (`msa`) | 50.0 | 80.0 | 25.0 |" in lines
    assert "| SSA (single source) (`ssa`) | 50.0 | 80.0 | - |" in lines  # no control in its history
    assert len(lines) == 2 + len(METHODS)


def test_final_histories_are_read_from_the_run_folders(tmp_path):
    finals = {m: {"run_dir": str(tmp_path / m)} for m in METHODS}
    finals["msa"]["run_dir"] = ""  # no run
    (tmp_path / "ssa").mkdir()
    (tmp_path / "ssa" / "history.json").write_text(json.dumps({"test_shuffled_text": {"test": {"acc": 0.1}}}))
    got = _final_histories(SimpleNamespace(outputs={"finals": finals}, options={}))
    assert got["ssa"] == {"test_shuffled_text": {"test": {"acc": 0.1}}}
    assert got["msa"] is None and got["raw_template"] is None  # no folder, no history: "-"
