"""The GPU suite (clipvg.bench.gpu_suite) runs end to end in its CPU smoke mode: every section,
every case measured or skipped with its reason, JSON + Markdown written. Speed is never checked
here; the suite is meant for a GPU machine (docs/benchmarks.md)."""

import json

import pytest
import torch

from clipvg.bench import gpu_suite


def test_smoke_runs_every_section_and_writes_json_and_markdown(tmp_path):
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke"]) == 0
    report = json.loads((tmp_path / "gpu-suite.json").read_text())
    assert report["smoke"] and report["environment"]["device"] == "cpu"
    md = (tmp_path / "gpu-suite.md").read_text()
    for section in ("train", "score", "augment"):
        assert f"## {section}" in md
        for r in report[section]:
            assert "error" not in r, r
            assert r["case"] in md
            if "skipped" in r:
                assert "compil" in r["skipped"], r  # smoke skips only the compiling cases
            else:
                assert r["samples_per_s"] > 0
    measured = {r["case"] for r in report["train"] if "samples_per_s" in r}
    # the options of issue 19 that exist in the config schema run, each on its own
    assert measured == {"b2 current (auto: bf16 towers)", "b2 bf16-all", "b2 fp16-frozen (official)",
                        "b2 sync_every=16", "b2 truncate_text"}
    assert all(r["batch_size"] == 2 and r["steps"] == 1 for r in report["train"] if "samples_per_s" in r)
    assert {r["case"] for r in report["augment"]} == {"backend cpu", "backend device"}
    assert [r["case"] for r in report["score"] if "samples_per_s" in r] == ["b8 default precision", "b8 full_bf16"]


def test_a_case_whose_option_this_clipvg_lacks_is_skipped_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "train_cases", lambda smoke: [
        ("b2 future option", ["train.batch_size=2", "train.warp_drive=true"]),
        ("b2 current", ["train.batch_size=2"])])
    assert gpu_suite.main(["--out", str(tmp_path), "--smoke", "--sections", "train", "--skip", "current"]) == 0
    future, current = json.loads((tmp_path / "gpu-suite.json").read_text())["train"]
    assert future["skipped"].startswith("not in this clipvg's config") and "warp_drive" in future["skipped"]
    assert current == {"case": "b2 current", "skipped": "--skip"}


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="checks the refusal on a machine without CUDA; this one has a GPU "
                           "(tests/gpu/test_cuda_paths.py runs the suite on it)")
def test_refuses_cuda_where_there_is_none(tmp_path, capsys):
    """Planted defect it catches: ``gpu_suite.main`` without its CUDA check (it would then
    fail inside a case or write a report of errors instead of exiting 2 with one line)."""
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu-suite.json").exists()
