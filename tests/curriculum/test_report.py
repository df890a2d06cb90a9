"""The report's accuracy table with the shuffled-text column (clipvg.curriculum.report)."""

from clipvg.curriculum.report import METHODS, accuracy_lines, accuracy_table, shuffled_accuracy_table


def _finals(shuffled=0.25):
    return {m: {"val_acc": 0.5, "test": {"test": 0.8}, "test_shuffled_text": {"test": shuffled}}
            for m in METHODS}


def test_shuffled_accuracy_comes_from_each_final_models_outcome():
    finals = _finals()
    del finals["ssa"]["test_shuffled_text"]  # a finals stage written before the control existed
    finals["msa"]["test_shuffled_text"] = {}  # no run (an empty pool)
    finals["raw_union"]["test_shuffled_text"] = {"test": None}  # one image: nothing to shuffle
    table = shuffled_accuracy_table(finals)
    assert set(table) == set(METHODS)
    assert table["raw_template"] == table["full_supervised"] == {"test": 0.25}
    assert table["ssa"] == table["msa"] == {} and table["raw_union"] == {"test": None}


def test_the_table_has_a_shuffled_text_column_after_each_held_out_split():
    finals = _finals()
    finals["ssa"]["test_shuffled_text"] = {}
    lines = accuracy_lines(accuracy_table(finals), shuffled_accuracy_table(finals), ["test"])
    assert lines[0] == "| method | val | test | test, shuffled text |"
    assert lines[1] == "|---|---|---|---|"
    assert "| MSA (multi-source) (`msa`) | 50.0 | 80.0 | 25.0 |" in lines
    assert "| SSA (single source) (`ssa`) | 50.0 | 80.0 | - |" in lines  # no control in its history
    assert len(lines) == 2 + len(METHODS)


def test_a_method_left_out_has_no_row_and_the_report_says_why():
    """CLIP-VG's unsupervised release has no ground-truth train split: the finals leave the fully
    supervised model out (clipvg.distributed.pipeline), and the table must not show a row of
    made-up numbers for it (planted defect: a row of n/a or of another method's values)."""
    finals = _finals()
    del finals["full_supervised"]
    acc = accuracy_table(finals)
    assert "full_supervised" not in acc
    lines = accuracy_lines(acc, shuffled_accuracy_table(finals), ["test"])
    assert len(lines) == 2 + len(METHODS) - 1
    assert not any("full_supervised" in line for line in lines)
