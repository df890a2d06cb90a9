"""generate_for_images: schema, options, grouping by image, and the same rows for an image
whichever batch it is in; plus the triplets / captions table specs."""

import pyarrow as pa
import pytest

from clipvg.sources.synthetic import scenes as syn
from clipvg.data.schema import (
    CAPTIONS, SAMPLES_SCHEMA, TRIPLETS, SchemaError, conform, validate_table,
)
from clipvg.sources.synthetic.tables import tables_of_images
from clipvg.pseudo.generate import GENERATORS, generate_for_images, resolve_options

SOURCES = tuple(GENERATORS)


@pytest.fixture(scope="module")
def tables():
    images = [syn.generate_image(syn.image_rng(11, "train", i), image_id=f"im{i:02d}") for i in range(16)]
    return tables_of_images(images, "train", 224)


def run(source, t, images=None, **kw):
    kw.setdefault("seed", 5)
    return generate_for_images(source, t["images"] if images is None else images,
                               t["detections"], t["triplets"], t["captions"],
                               dataset="synthetic", **kw)


@pytest.mark.parametrize("source", SOURCES)
def test_samples_schema_and_ids(tables, source):
    out = run(source, tables)
    assert out.schema == SAMPLES_SCHEMA and out.num_rows > 10
    validate_table(out, "samples")
    rows = out.to_pylist()
    assert all(r["sample_id"].startswith(f"{source}-im") and r["source"] == source
               for r in rows)
    per_image = {}
    for r in rows:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= (10 if source == "relation" else 6)


@pytest.mark.parametrize("source", SOURCES)
def test_an_image_gets_the_same_rows_in_any_batch(tables, source):
    whole = run(source, tables).to_pylist()
    images = tables["images"]
    parts = [images.slice(0, 5), images.slice(5, 3), images.slice(8)]
    pieces = [run(source, tables, images=p).to_pylist() for p in parts[::-1]]
    assert sorted(sum(pieces, []), key=lambda r: r["sample_id"]) == sorted(
        whole, key=lambda r: r["sample_id"])
    reordered = {k: t.take(list(range(t.num_rows))[::-1]) for k, t in tables.items()}
    assert sorted(run(source, reordered).to_pylist(), key=lambda r: r["sample_id"]) == sorted(
        whole, key=lambda r: r["sample_id"])  # record order does not matter either


def test_seed_split_dataset_and_options(tables):
    a, b = run("template", tables), run("template", tables, seed=6)
    assert a.column("text").to_pylist() != b.column("text").to_pylist()
    val = run("caption", tables, split="val").to_pylist()
    assert {r["split"] for r in val} == {"val"} and {r["dataset"] for r in val} == {"synthetic"}
    few = run("relation", tables, options={"top_k": 2, "min_score": 0.3}).to_pylist()
    assert len(few) <= 2 * tables["images"].num_rows
    assert resolve_options("template", {"top_n": 1}) == dict(
        top_n=1, max_per_image=6, min_area_frac=1 / 64, dup_iou=0.4)
    with pytest.raises(ValueError, match="'top_k'"):
        run("template", tables, options={"top_k": 3})
    with pytest.raises(ValueError, match="'pseudo'"):
        run("pseudo", tables)
    with pytest.raises(ValueError, match="triplets"):
        generate_for_images("relation", tables["images"], tables["detections"], None, None,
                            seed=0, dataset="x")


def test_images_without_records_and_records_of_other_images(tables):
    lonely = pa.Table.from_pylist([dict(image_id="nobody", width=10, height=10)])
    for source in SOURCES:
        out = run(source, tables, images=lonely)
        assert out.num_rows == 0 and out.schema == SAMPLES_SCHEMA
    twice = pa.concat_tables([tables["images"].slice(0, 1)] * 2)
    assert run("template", tables, images=twice).num_rows == run(
        "template", tables, images=tables["images"].slice(0, 1)).num_rows


def test_triplets_and_captions_specs(tables):
    validate_table(tables["triplets"], TRIPLETS)
    validate_table(tables["captions"], CAPTIONS)
    bad = tables["triplets"].slice(0, 2).to_pylist()
    table = conform(pa.Table.from_pylist(bad), TRIPLETS)  # list<double> boxes are cast
    assert table.schema.field("subject_box").type == TRIPLETS.schema.field("subject_box").type
    bad[1]["object_box"] = [5.0, 5.0, 1.0, 9.0]
    bad[0]["predicate_score"] = 1.5
    with pytest.raises(SchemaError, match=r"(?s)'object_box', row 1.*'predicate_score', row 0"):
        conform(pa.Table.from_pylist(bad), TRIPLETS)
    caps = tables["captions"].to_pylist()
    caps[0]["score"] = -0.1
    with pytest.raises(SchemaError, match="'score', row 0"):
        conform(pa.Table.from_pylist(caps), CAPTIONS)
