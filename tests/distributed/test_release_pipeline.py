"""The curriculum on CLIP-VG's released files, through the CLI, as a researcher would run it
(issue 24): a tiny release in the official layout (tests/world_release.py) is imported
(``import-official``, then ``--add`` of the fully supervised ``unc_train.pth`` the unsupervised
release lacks), the whole pipeline runs on it with tiny towers and one epoch per training,
``evaluate`` scores the MSA model on testA / testB, and ``export-official --run`` writes the
refined release.

What must hold, each checked against the release's own entries (not against clipvg's output):
the pipeline's sources are the imported files' rows, nothing generated and nothing counted twice;
the exported SSA file is exactly the template entries whose reliability (the scores table of
the template measurer) passed SSA's threshold, in the official 5-tuple layout; each MSA file
is exactly its source's entries that passed that step's threshold.
"""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest
import torch

from clipvg.data import storage
from world_release import KEY, SOURCES, cli, tiny_world, write_release
from tiny_train import TINY_TRAIN

PIPELINE = [
    *TINY_TRAIN, "train.epochs=1", "curriculum.sources=[template,relation,caption]",
    "curriculum.thresholds=[0.0,0.5]", "curriculum.h0=0.5", "curriculum.source_order=given",
    "curriculum.measurer_selection=own", "curriculum.launcher=in_process",
    "curriculum.scoring.actors=1",
    "curriculum.scoring.cpus_per_actor=0.5", "curriculum.scoring.batch_size=8",
    "data.val_split=val", "data.test_splits=[testA,testB]", "storage.run_name=release",
]


def as_tuple(entry) -> tuple:
    """An official entry with its box as a tuple of floats (torch.load gives lists back)."""
    image, aux_1, box, text, aux_2 = entry
    return image, json.dumps(aux_1), tuple(float(v) for v in box), text, json.dumps(aux_2)


@pytest.fixture(scope="module")
def release_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    world = tiny_world(tmp)
    release = write_release(world, tmp / "release")
    ds, img = str(tmp / "unc"), str(tmp / "release" / "image_data")
    rc, out = cli("import-official", "--dataset", KEY, "--split-root", str(tmp / "release" / "unsup_multi_source"),
                  "--image-root", img, "--out", ds)
    assert rc == 0, out
    rc, out = cli("import-official", "--dataset", KEY, "--add", "--splits", "train",
                  "--split-root", str(tmp / "release" / "full_sup_data"), "--image-root", img, "--out", ds)
    assert rc == 0, out
    rc, out = cli("pipeline", *PIPELINE, f"data.uri={ds}", f"storage.root={tmp / 'runs'}")
    assert rc == 0, out
    run = tmp / "runs" / "release"
    finals = storage.read_json(str(run / "stages" / "finals.json"))["outputs"]
    rc, evaluated = cli("evaluate", "--checkpoint", f"{finals['msa']['run_dir']}/best", "--data", ds,
                        "--splits", "testA,testB", "--out", str(tmp / "eval"), *TINY_TRAIN)
    assert rc == 0, evaluated
    rc, exported = cli("export-official", "--run", str(run), "--out", str(tmp / "refined"))
    assert rc == 0, exported
    return dict(tmp=tmp, run=run, ds=ds, release=release, pipeline_log=out)


def stage(run, name: str) -> dict:
    return storage.read_json(str(run / "stages" / f"{name.replace(':', '-')}.json"))["outputs"]


def passed(run, measurer: str, source: str, h: float) -> set[int]:
    """official_row of the source's samples whose reliability under ``measurer`` is > h."""
    scores = storage.read_table(str(run / "scores" / f"{measurer}-on-{source}"))
    kept = set(scores.filter(pc.field("reliability") > h).column("sample_id").to_pylist())
    rows = storage.read_table(str(run / "pseudo" / source))
    return {r for s, r in zip(rows.column("sample_id").to_pylist(), rows.column("official_row").to_pylist())
            if s in kept}


def test_the_sources_are_the_imported_files(release_run):
    run, release = release_run["run"], release_run["release"]
    for s in SOURCES:
        got = stage(run, f"pseudo:{s}")
        assert got["rows"] == len(release["sources"][s]), s  # the file's rows, not the union's
        rows = storage.read_table(str(run / "pseudo" / s))
        assert set(rows.column("source").to_pylist()) == {s}
        assert sorted(rows.column("official_row").to_pylist()) == list(range(len(release["sources"][s])))
    report = storage.read_json(str(run / "report" / "report.json"))
    assert set(report["pseudo_rows"]) == set(SOURCES)
    assert "full_supervised" in report and "left_out" not in report  # train was --add-ed


def test_exported_ssa_file_is_exactly_the_passing_samples(release_run):
    run, tmp, release = release_run["run"], release_run["tmp"], release_run["release"]
    ssa = stage(run, "ssa")
    first = ssa["source"]
    tag = f"{ssa['h']:.1f}".replace(".", "_")
    entries = torch.load(tmp / "refined" / f"{KEY}_train_pseudo_refine_{tag}.pth", weights_only=True)
    want = [release["sources"][first][i] for i in sorted(passed(run, first, first, ssa["h"]))]
    assert entries, "SSA kept nothing: the test would not see a wrong selection"
    assert sorted(map(as_tuple, entries)) == sorted(map(as_tuple, want))
    assert all(len(e) == 5 for e in entries)


def test_exported_msa_files_follow_its_order_and_thresholds(release_run):
    run, tmp, release = release_run["run"], release_run["tmp"], release_run["release"]
    msa = stage(run, "msa")
    for pos, step in enumerate(msa["steps"], 1):
        s, h = step["source"], step["h"]
        path = tmp / "refined" / "train_separate" / f"{pos}_{KEY}_train_pseudo_{s}_{f'{h:.1f}'.replace('.', '_')}.pth"
        entries = torch.load(path, weights_only=True)
        want = [release["sources"][s][i] for i in sorted(passed(run, step["measurer"], s, h))]
        assert sorted(map(as_tuple, entries)) == sorted(map(as_tuple, want)), path.name
    meta = json.loads((tmp / "refined" / "export.json").read_text())
    assert str(run) in json.dumps(meta)


def test_evaluate_on_testA_and_testB(release_run):
    """Every entry of the release's testA and testB files evaluated, none failed (planted
    defect: evaluate reading one split, or the import dropping test rows)."""
    splits = json.loads((release_run["tmp"] / "eval" / "metrics.json").read_text())["splits"]
    assert set(splits) == {"testA", "testB"}
    for split, entries in release_run["release"]["splits"].items():
        if split in splits:
            assert splits[split]["rows"] == splits[split]["total"] == len(entries) > 0, split
            assert splits[split]["failed"] == 0 and splits[split]["acc"] is not None
