"""export-official --run: a pipeline run's SSA / MSA selections as the refined release.

The run folder is made by hand (samples and scores Parquet tables, stage manifests shaped as
clipvg.distributed.pipeline writes them); the pipeline never runs. Each pool mixes rows
imported from official files (tests/official_release.py) with synthetic rows that have only
``box``, so both ways of writing an entry are checked.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import torch

from clipvg.cli import main
from clipvg.data import storage
from clipvg.data.pseudo_sources import source_rows
from clipvg.errors import UserError
from clipvg.sources.official.importer import import_official
from clipvg.sources.official.release import export_release
from clipvg.sources.official.unpickler import load_split_file
from official_release import CAPTION, P, RELATION, TEMPLATE, release, snapshot

BOX = pa.list_(pa.float32(), 4)


def synthetic(prefix: str, n: int) -> list[dict]:
    """Rows with only the samples columns: box (x0, y0, x1, y1) exact in float32."""
    return [dict(sample_id=f"{prefix}/{i}", image_id=f"img{i}.png", text=f"Thing Number {i}",
                 box=[10.0 + i, 20.0, 40.5 + i, 60.25], source=prefix, split="train",
                 dataset="unc") for i in range(n)]


def syn_entry(row: dict) -> tuple:
    x0, y0, x1, y1 = row["box"]
    return (row["image_id"], P, [x0, y0, x1 - x0, y1 - y0], row["text"], P)


def write_source(run, ds: str, source: str, n_syn: int, reliability: list) -> tuple[str, list]:
    """pseudo/<source>: the imported rows of ``source`` then ``n_syn`` synthetic ones;
    scores/<source>: ``reliability`` per row in that order. -> (uri, [(id, entry, r)])."""
    imported = source_rows(ds, source)
    syn = synthetic(f"syn-{source}", n_syn)
    schema = pa.schema([f.with_nullable(True) for f in imported.schema])
    table = pa.concat_tables([imported.cast(schema), pa.Table.from_pylist(
        syn, schema=pa.schema([schema.field(c) for c in syn[0]]))], promote_options="permissive")
    uri = str(run / "pseudo" / source)
    storage.write_table(table, uri)
    ids = table.column("sample_id").to_pylist()
    storage.write_table(pa.table({"sample_id": ids, "reliability": pa.array(reliability,
                                                                              pa.float32())}),
                        str(run / "scores" / source))
    file_entry = {"template": TEMPLATE, "relation": RELATION, "caption": CAPTION}[source][0]
    entries = [file_entry] + [syn_entry(r) for r in syn]
    return uri, list(zip(ids, entries, reliability))


def entry(run, source: str, h: float) -> dict:
    return {"samples": str(run / "pseudo" / source), "scores": str(run / "scores" / source),
            "threshold": h}


def stage(run, name: str, outputs: dict) -> None:
    storage.write_json({"stage": name, "key": "k", "outputs": outputs,
                        "finished_at": "2026-12-01T00:00:00Z"}, str(run / "stages" / f"{name}.json"))


@pytest.fixture
def made(tmp_path):
    """An imported unsup_multi_source dataset and a finished run over it: SSA on template
    (h 0.5), MSA in the order caption (h 0.3, measurer template), template (0.45), relation
    (0.0)."""
    root, images = release(tmp_path)
    ds = str(tmp_path / "ds")
    import_official("unc", str(root / "unsup_multi_source"), str(images), ds, progress=False)
    run = tmp_path / "run"
    rows = {"template": write_source(run, ds, "template", 5, [0.9, 0.5, 0.51, 0.2, None, 0.7]),
            "relation": write_source(run, ds, "relation", 2, [0.0, 0.05, 0.0]),
            "caption": write_source(run, ds, "caption", 2, [0.31, 0.3, 0.99])}
    stage(run, "world", {"uri": ds, "counts": {}})
    stage(run, "ssa", {"source": "template", "h": 0.5, "curve": [],
                       "chosen": {"pool": [entry(run, "template", 0.5)], "val_acc": 0.4}})
    order, hs = ["caption", "template", "relation"], {"caption": 0.3, "template": 0.45,
                                                      "relation": 0.0}
    measurers = {"caption": "template", "template": "template", "relation": "relation"}
    pools = [[entry(run, s, hs[s]) for s in order[:k + 1]] for k in range(3)]
    stage(run, "msa", {
        "order": order, "thresholds": hs, "order_search": "fixed", "order_accs": {},
        "steps": [{"source": s, "measurer": measurers[s], "h": hs[s], "measurer_accs": {},
                   "curve": [], "chosen": {"pool": pools[k], "val_acc": 0.5}}
                  for k, s in enumerate(order)],
        "final": {"pool": pools[-1], "val_acc": 0.5}})
    return dict(run=run, ds=ds, rows={s: r[1] for s, r in rows.items()}, out=tmp_path / "rel")


def above(rows: list, h: float) -> list[tuple]:
    return [e for _, e, r in rows if r is not None and r > h]


def test_the_refined_release_has_exactly_the_selected_rows(made):
    out = made["out"]
    summary = export_release(str(made["run"]), str(out))
    ssa = load_split_file(str(out / "unc_train_pseudo_refine_0_5.pth"))
    # r > 0.5 strictly: the imported row (0.9), 0.51 and 0.7; not 0.5, 0.2 or no score
    assert ssa == above(made["rows"]["template"], 0.5)
    assert ssa == [TEMPLATE[0], syn_entry(synthetic("syn-template", 5)[1]),
                   syn_entry(synthetic("syn-template", 5)[4])]
    assert ssa[0][3] == "Left Man" and ssa[1][3] == "Thing Number 1"  # texts as stored
    names = sorted(p.name for p in (out / "train_separate").iterdir())
    assert names == ["1_unc_train_pseudo_caption_0_3.pth", "2_unc_train_pseudo_template_0_45.pth",
                     "3_unc_train_pseudo_relation_0_0.pth"]
    for name, source, h in [(names[0], "caption", 0.3), (names[1], "template", 0.45),
                            (names[2], "relation", 0.0)]:
        path = out / "train_separate" / name
        assert load_split_file(str(path)) == above(made["rows"][source], h)
        # the official code reads it with torch.load (weights_only, the torch >= 2.6 default)
        assert torch.load(path, weights_only=True) == above(made["rows"][source], h)
    assert torch.load(out / "unc_train_pseudo_refine_0_5.pth", weights_only=True) == ssa
    written = json.loads((out / "export.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["run"] == str(made["run"]) and written["dataset_uri"] == made["ds"]
    assert written["dataset"] == "unc" and written["created_at"].endswith("Z")
    assert written["counts"] == {"unc_train_pseudo_refine_0_5.pth": 3,
                                 f"train_separate/{names[0]}": 2,
                                 f"train_separate/{names[1]}": 4,  # 0.9 0.5 0.51 0.7
                                 f"train_separate/{names[2]}": 1}
    assert [(s["position"], s["source"], s["measurer"], s["h"]) for s in written["msa"]["steps"]
            ] == [(1, "caption", "template", 0.3), (2, "template", "template", 0.45),
                  (3, "relation", "relation", 0.0)]
    assert written["msa"]["thresholds"] == {"caption": 0.3, "template": 0.45, "relation": 0.0}
    assert (written["ssa"]["source"], written["ssa"]["h"]) == ("template", 0.5)


def test_existing_files_are_refused_unless_overwrite(made, capsys):
    run, out = made["run"], made["out"]
    export_release(str(run), str(out))
    before = snapshot(out)
    with pytest.raises(UserError, match=r"unc_train_pseudo_refine_0_5.pth exists \(5 of the "
                                        r"release's files do\); replace them with --overwrite"):
        export_release(str(run), str(out))
    assert main(["export-official", "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert snapshot(out) == before
    assert main(["export-official", "--run", str(run), "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "train_separate/1_unc_train_pseudo_caption_0_3.pth: 2 entries" in printed


def test_a_synthetic_dataset_needs_dataset(made, tmp_path):
    run = made["run"]
    world = tmp_path / "world"
    storage.write_json({"kind": "clipvg-dataset", "dataset": "synthetic"},
                       str(world / "manifest.json"))
    storage.write_table(pa.Table.from_pylist(synthetic("w", 1)), str(world / "samples"))
    stage(run, "world", {"uri": str(world)})
    with pytest.raises(UserError, match="is dataset 'synthetic', not an official key: give "
                                        "--dataset KEY"):
        export_release(str(run), str(made["out"]))
    assert not made["out"].exists()
    # with --dataset every row is written from its box: the world has no box_raw
    export_release(str(run), str(made["out"]), dataset="flickr")
    got = load_split_file(str(made["out"] / "flickr_train_pseudo_refine_0_5.pth"))
    assert got == [(e[0], [e[2][0], e[2][1], e[2][0] + e[2][2], e[2][1] + e[2][3]], e[3])
                   for e in above(made["rows"]["template"], 0.5)]


def test_unfinished_stages_are_named(made, capsys):
    run = made["run"]
    (run / "stages" / "msa.json").unlink()
    with pytest.raises(UserError, match=r"stage\(s\) msa have not finished"):
        export_release(str(run), str(made["out"]))
    (run / "stages" / "ssa.json").unlink()
    assert main(["export-official", "--run", str(run), "--out", str(made["out"])]) == 2
    assert "stage(s) ssa, msa have not finished" in capsys.readouterr().err
    assert not made["out"].exists()
    assert main(["export-official", str(made["ds"]), "--run", str(run), "--out", "x"]) == 2
    assert "give a dataset URI (with --split) or --run RUN" in capsys.readouterr().err


def test_the_split_form_refuses_an_existing_file(made, capsys):
    target = made["out"] / "val.pth"
    argv = ["export-official", made["ds"], "--dataset", "unc", "--split", "val", "--out",
            str(target)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2 and "exists; replace it with --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
