"""``clipvg demo``: one model trained in this process, its figures, and no overwritten results."""

from clipvg.cli import main
from tiny_train import TINY_TRAIN

TINY = [o for o in TINY_TRAIN if not o.startswith("scaling.")] + ["train.epochs=1", "model.weights=null"]


def test_demo_writes_figures_and_refuses_a_second_run_unless_overwrite(tmp_path, capsys):
    args = ["demo", "--config", "demo", *TINY, f"storage.root={tmp_path}", "storage.run_name=d"]
    assert main(args) == 0
    run = tmp_path / "d"
    assert (run / "curve.png").stat().st_size > 0 and (run / "predictions.png").stat().st_size > 0
    best = (run / "best" / "model.safetensors").read_bytes()
    capsys.readouterr()

    assert main(args) == 2  # the run holds results: refused, nothing touched
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert (run / "best" / "model.safetensors").read_bytes() == best

    assert main([*args[:3], "--overwrite", *args[3:]]) == 0


def test_demo_refuses_an_object_store_root(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--config", "demo", *TINY, "storage.root=s3://bucket/runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert "s3://bucket/runs" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no local folder named after the URI
