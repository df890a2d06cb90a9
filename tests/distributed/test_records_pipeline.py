"""The curriculum on a dataset whose pseudo-labels are generated from real tools' output
(issue 24): the ground truth of a tiny official release is imported (``import-official``,
``full_sup_data``: train / val / testA / testB), the world's simulated detector, scene graph and
captioner are written in the formats the real tools write (tests/world_release.py) and
converted with ``clipvg records``, and the pipeline runs to ``scores:template``.

Two datasets cover the four converters: one with Pseudo-Q's detection results, RelTR's outputs
and caption lines (three sources), one with COCO detection results (the template source).

The records cover the val images too: an image of an evaluation split must never get
pseudo-labels (the dataset's images serve every split, as COCO's train2014 folder does for
RefCOCO), so the pseudo stages must leave exactly those images out. Planted defect this catches:
``generation_images`` ignoring ``exclude_splits``.
"""

from __future__ import annotations


import pyarrow.compute as pc
import pytest

from clipvg.data import storage
from tiny_train import TINY_TRAIN
from world_release import KEY, cli, tiny_world, write_real_records, write_release

PIPELINE = [
    *TINY_TRAIN, "train.epochs=1", "curriculum.launcher=in_process", "curriculum.scoring.actors=1",
    "curriculum.scoring.cpus_per_actor=0.5", "curriculum.scoring.batch_size=8",
    "data.val_split=val", "data.test_splits=[testA,testB]", "--until", "scores:template",
]
NEEDS = {"template": ("detections",), "relation": ("triplets",), "caption": ("captions", "detections")}
DATASETS = {  # name -> (records formats, curriculum sources)
    "pseudoq": (("pseudoq-detections", "reltr", "captions-jsonl"), "[template,relation,caption]"),
    "coco": (("coco-detections",), "[template]"),
}


def records_args(fmt: str, files: dict) -> list[str]:
    return {"pseudoq-detections": ["--input", str(files["pseudoq"])],
            "coco-detections": ["--input", str(files["coco"]), "--annotations", str(files["instances"])],
            "reltr": ["--input", str(files["reltr"])],
            "captions-jsonl": ["--input", str(files["captions"])]}[fmt]


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records")
    world = tiny_world(tmp)
    release = write_release(world, tmp / "release")
    real = write_real_records(world, tmp / "real")
    val_images = {e[0] for e in release["splits"]["val"]}
    out = {}
    for name, (formats, sources) in DATASETS.items():
        ds = str(tmp / name)
        rc, log = cli("import-official", "--dataset", KEY, "--split-root", str(tmp / "release" / "full_sup_data"),
                      "--image-root", str(tmp / "release" / "image_data"), "--out", ds)
        assert rc == 0, log
        for fmt in formats:
            rc, log = cli("records", "--dataset", ds, "--format", fmt, *records_args(fmt, real["files"]))
            assert rc == 0, (fmt, log)
        rc, log = cli("pipeline", *PIPELINE, f"curriculum.sources={sources}", f"data.uri={ds}",
                      f"storage.root={tmp / 'runs'}", f"storage.run_name={name}")
        assert rc == 0, log
        out[name] = dict(run=tmp / "runs" / name, ds=ds, sources=sources.strip("[]").split(","))
    return dict(runs=out, val_images=val_images, real=real)


def outputs(run, stage: str) -> dict:
    return storage.read_json(str(run / "stages" / f"{stage.replace(':', '-')}.json"))["outputs"]


@pytest.mark.parametrize("name", list(DATASETS))
def test_pseudo_labels_are_generated_for_the_train_images_only(runs, name):
    run = runs["runs"][name]["run"]
    for source in runs["runs"][name]["sources"]:
        made = outputs(run, f"pseudo:{source}")
        assert made["rows"] > 0 and "imported" not in made, (source, made)
        rows = storage.read_table(str(run / "pseudo" / source))
        labelled = set(rows.column("image_id").to_pylist())
        assert labelled and not labelled & runs["val_images"], source
        assert labelled <= runs["real"]["images"]
        named = set()  # images of the record tables the source reads, as converted
        for table in NEEDS[source]:
            named |= set(storage.read_table(f"{runs['runs'][name]['ds']}/{table}").column("image_id").to_pylist())
        assert made["held_out_images"] == len(named & runs["val_images"]) > 0, made


@pytest.mark.parametrize("name", list(DATASETS))
def test_the_template_measurer_scores_every_source(runs, name):
    run, sources = runs["runs"][name]["run"], runs["runs"][name]["sources"]
    scored = outputs(run, "scores:template")
    assert set(scored) == set(sources)
    for source in sources:
        table = storage.read_table(scored[source]["uri"])
        pseudo = storage.read_table(str(run / "pseudo" / source))
        assert sorted(table.column("sample_id").to_pylist()) == sorted(pseudo.column("sample_id").to_pylist())
        assert pc.all(pc.is_valid(table.column("reliability"))).as_py()
    assert not (run / "stages" / "ssa.json").exists()  # --until stopped there
