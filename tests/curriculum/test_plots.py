"""Reliability histogram export and pictures (clipvg.curriculum.plots)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from clipvg.curriculum.plots import histogram_record, plot_sr_cr_matrix, score_histograms

PNG = b"\x89PNG"


def scores(r, measurer="template", source="template"):
    return pa.table({"sample_id": [f"s{i}" for i in range(len(r))],
                     "reliability": pa.array(r, pa.float32()),
                     "measurer": [measurer] * len(r), "source": [source] * len(r)})


def test_record_counts_zero_null_apart():
    record = histogram_record(scores([0.0, 0.05, 0.09, 0.11, 1.0, None, 0.0]), bins=10)
    assert record["counts"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]  # bin k: (k/10, (k+1)/10]
    assert (record["zero"], record["null"], record["n"]) == (2, 1, 7)
    assert record["measurer"] == record["source"] == "template"


def test_score_histograms_write_json_and_png_into_the_scores_folder(tmp_path):
    rng = np.random.default_rng(0)
    out = score_histograms(scores(rng.beta(5, 2, 500).tolist()), str(tmp_path / "scores"), bins=1000)
    record = json.loads((tmp_path / "scores" / "histogram.json").read_text())
    assert record == out["record"] and len(record["counts"]) == 1000 and sum(record["counts"]) == 500
    png = (tmp_path / "scores" / "histogram.png").read_bytes()
    assert png[:4] == PNG and len(png) > 5000


def test_sr_cr_matrix(tmp_path):
    rng = np.random.default_rng(1)
    names = ["template", "relation", "caption"]
    hists = {(m, s): histogram_record(scores(rng.random(200).tolist(), m, s), 100)
             for m in names for s in names if (m, s) != ("caption", "relation")}  # one missing
    hists[("caption", "template")] = np.asarray(hists[("caption", "template")]["counts"])  # bare counts
    path = plot_sr_cr_matrix(hists, str(tmp_path / "fig5.png"))
    png = (tmp_path / "fig5.png").read_bytes()
    assert path == str(tmp_path / "fig5.png") and png[:4] == PNG and len(png) > 20000
    with pytest.raises(ValueError):
        plot_sr_cr_matrix({}, str(tmp_path / "none.png"))
