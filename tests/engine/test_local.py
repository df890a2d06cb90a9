"""The local loop end to end, on a tiny world: outputs written, every epoch evaluated."""

import json

from clipvg.config import load_config
from clipvg.engine.local import train_local
from clipvg.model import load_model


def test_train_local_writes_outputs_and_reports_every_epoch(tiny_run, tmp_path):
    cfg = tiny_run()
    history = train_local(cfg, progress=False)
    run_dir = tmp_path / "t"
    assert [e["epoch"] for e in history.epochs] == [1, 2]
    assert history.test["test"]["total"] > 0
    # the shuffled-text control: inside the test summary, and on its own in history.json
    control = history.test["test"]["shuffled_text"]
    assert control["total"] == history.test["test"]["total"] and control["skipped"] == 0
    assert history.test_shuffled_text == {"test": {"acc": control["acc"], "per_type": control["per_type"]}}
    saved = json.loads((run_dir / "history.json").read_text())
    assert saved["test_shuffled_text"] == history.test_shuffled_text
    assert all("shuffled_text" in e["val"] for e in saved["epochs"])
    assert load_config(run_dir / "config.yaml") == cfg  # resolved config next to the outputs
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step" in r]
    assert steps and all(r["samples_per_s"] > 0 for r in steps)
    assert [r["epoch"] for r in lines if "val" in r] == [1, 2]
    for folder in ("best", "last"):
        model = load_model(run_dir / folder)
        assert model.config.image_size == 64
