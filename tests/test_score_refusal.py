"""``clipvg score`` refuses an existing ``--out`` before torch, the dataset or Ray (no Ray here:
the refusal path is all this file checks; tests/distributed/test_scoring.py scores for real)."""

from clipvg.cli import main
from listing import listing, refusal_line


def test_score_refuses_an_existing_scores_table_before_ray(tmp_path, capsys, monkeypatch):
    """An --out holding a scores table is refused (exit 2, one line naming it and --overwrite),
    nothing under the storage root changes, and neither the scoring module (torch) nor Ray is
    reached. Planted defect that fails it: score_cli.run without its refuse_existing call (the
    table was rewritten with write_table(mode="overwrite") after a full scoring pass)."""
    out = tmp_path / "scores" / "template-by-template"
    out.mkdir(parents=True)
    (out / "part-0.parquet").write_bytes(b"earlier scores")
    (out / "histogram.json").write_text("{}\n")
    before = listing(tmp_path)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started although --out holds a scores table")

    monkeypatch.setattr("clipvg.distributed.score_cli.init_ray", no_ray)
    rc = main(["score", "--model", str(tmp_path / "m" / "best"), "--samples", str(tmp_path / "samples"),
               "--out", str(out), f"storage.root={tmp_path}"])
    assert rc == 2
    refusal_line(capsys.readouterr().err, "score", out)
    assert listing(tmp_path) == before
