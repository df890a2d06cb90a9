"""Row-level validation, the quarantine table, ingest, validate_dataset and `clipvg validate`.

Every dataset here is built by hand in tmp_path; expected reasons, counts and sizes are written
out from the construction of each case, never computed by the code under test.
"""

import io
import string

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clipvg import cli
from clipvg.data import storage
from clipvg.data import validate as v
from clipvg.data.schema import SchemaError, validate_table
from clipvg.data.validate_checks import plainly_fits

W, H = 100, 80  # size of the default test image

SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string()), pa.field("image_id", pa.string()),
    pa.field("text", pa.string()), pa.field("box", pa.list_(pa.float64())),
    pa.field("source", pa.string()), pa.field("split", pa.string()),
    pa.field("dataset", pa.string()),
]
IMAGE_FIELDS = [pa.field("image_id", pa.string()), pa.field("uri", pa.string()),
                pa.field("width", pa.int32()), pa.field("height", pa.int32())]


def encoded(w=W, h=H, fmt="PNG", noise=False) -> bytes:
    """An encoded w x h image (noise makes it big enough to cut in half meaningfully)."""
    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(pixels, "RGB")
    else:
        im = Image.new("RGB", (w, h), (200, 30, 30))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def row(i, **over) -> dict:
    r = dict(sample_id=f"s{i}", image_id="img0", text=f"the red square number {i}",
             box=[10.0, 10.0, 50.0, 50.0], source="gt", split="train", dataset="handmade")
    r.update(over)
    return r


def samples_table(rows, text_type=pa.string(), extra=()) -> pa.Table:
    fields = [pa.field("text", text_type) if f.name == "text" else f for f in SAMPLE_FIELDS]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields + list(extra)))


def write_images(root, files: dict, listed=None) -> pa.Table:
    """Write ``files`` (image_id -> bytes, or None for no file) under root/files/ and return
    the images table (width/height null unless ``listed`` gives them)."""
    listed = listed or {}
    rows = []
    for image_id, data in files.items():
        rel = f"files/{image_id}.img"
        if data is not None:
            storage.write_bytes(data, storage.join(str(root), rel))
        w, h = listed.get(image_id, (None, None))
        rows.append(dict(image_id=image_id, uri=rel, width=w, height=h))
    return pa.Table.from_pylist(rows, schema=pa.schema(IMAGE_FIELDS))


def check(root, rows, files=None, text_type=pa.string(), **kw):
    files = {"img0": encoded()} if files is None else files
    return v.check_samples(samples_table(rows, text_type), write_images(root, files), str(root),
                           **kw)


def only_reason(root, r, files=None, **kw):
    """(reason, detail) of a single row that must be quarantined."""
    accepted, quarantine, _, report = check(root, [r], files, **kw)
    assert accepted.num_rows == 0 and quarantine.num_rows == 1 and report.quarantined == 1
    q = quarantine.to_pylist()[0]
    assert q["input_row"] == 0 and report.reasons == {q["reason"]: 1}
    return q["reason"], q["detail"]


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def test_valid_row_is_accepted_and_width_height_filled_from_the_file(tmp_path):
    accepted, quarantine, images, report = check(tmp_path, [row(0)])
    assert (accepted.num_rows, quarantine.num_rows) == (1, 0)
    assert images.to_pylist()[0]["width"] == 100 and images.to_pylist()[0]["height"] == 80
    assert report.summary() == ("accepted 1 of 1; quarantined 0\n"
                                "images: 1 checked, 0 missing or unreadable, 0 sizes corrected")
    assert accepted.schema.field("box").type == pa.list_(pa.float32(), 4)
    validate_table(accepted, "samples")


def test_listed_size_that_disagrees_is_replaced_and_counted(tmp_path):
    images = write_images(tmp_path, {"img0": encoded()}, listed={"img0": (640, 480)})
    _, _, out, report = v.check_samples(samples_table([row(0)]), images, str(tmp_path))
    assert (out.column("width")[0].as_py(), out.column("height")[0].as_py()) == (100, 80)
    assert report.sizes_corrected == 1 and report.quarantined == 0


def test_corrupt_image_random_bytes(tmp_path):
    junk = np.random.default_rng(1).bytes(2000)
    reason, detail = only_reason(tmp_path, row(0), {"img0": junk})
    assert reason == "image_unreadable" and "files/img0.img" in detail
    assert "object at 0x" not in detail  # PIL names the BytesIO it was given, not the file


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    data = encoded(fmt=fmt, noise=True)
    reason, detail = only_reason(tmp_path, row(0), {"img0": data[: len(data) // 2]})
    assert reason == "image_unreadable" and "files/img0.img" in detail


def test_truncated_image_passes_a_header_only_check(tmp_path):
    data = encoded(noise=True)  # the documented tradeoff of decode_images=False
    accepted, _, _, _ = check(tmp_path, [row(0)], {"img0": data[: len(data) // 2]},
                              decode_images=False)
    assert accepted.num_rows == 1


def test_missing_file(tmp_path):
    reason, detail = only_reason(tmp_path, row(0), {"img0": None})
    assert reason == "missing_image" and str(tmp_path / "files" / "img0.img") in detail


def test_image_id_not_in_the_images_table(tmp_path):
    reason, detail = only_reason(tmp_path, row(0, image_id="nowhere"))
    assert reason == "missing_image" and "nowhere" in detail


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [[float("nan"), 1.0, 5.0, 5.0], [1.0, 1.0, float("inf"), 5.0],
                                 [1.0, 1.0, 1e39, 5.0]])  # 1e39 is inf as the stored float32
def test_non_finite_box(tmp_path, box):
    assert only_reason(tmp_path, row(0, box=box))[0] == "box_not_finite"


@pytest.mark.parametrize("box", [[10.0, 10.0, 10.0, 50.0], [10.0, 50.0, 50.0, 10.0]])
def test_zero_area_or_inverted_box(tmp_path, box):
    assert only_reason(tmp_path, row(0, box=box))[0] == "box_degenerate"


@pytest.mark.parametrize("box", [[150.0, 10.0, 200.0, 50.0], [100.0, 0.0, 120.0, 10.0],
                                 [-30.0, -30.0, -1.0, -1.0]])
def test_box_entirely_outside_the_image(tmp_path, box):
    reason, detail = only_reason(tmp_path, row(0, box=box))
    assert reason == "box_outside_image" and "100x80" in detail


def test_box_partly_outside_is_accepted_unchanged(tmp_path):
    accepted, _, _, _ = check(tmp_path, [row(0, box=[-10.0, -5.0, 150.0, 60.0])])
    assert accepted.column("box").to_pylist() == [[-10.0, -5.0, 150.0, 60.0]]


@pytest.mark.parametrize("box", [None, [1.0, 2.0, 3.0], [1.0, None, 3.0, 4.0]])
def test_malformed_box(tmp_path, box):
    assert only_reason(tmp_path, row(0, box=box))[0] == "malformed_entry"


# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  \t\n "])
def test_empty_or_whitespace_text(tmp_path, text):
    assert only_reason(tmp_path, row(0, text=text))[0] == "text_empty"


def test_invalid_utf8_in_a_binary_text_column(tmp_path):
    rows = [row(0, text=b"caf\xe9 on the left"), row(1, text="the blue caf\u00e9".encode())]
    accepted, quarantine, _, _ = check(tmp_path, rows, text_type=pa.binary())
    assert accepted.schema.field("text").type == pa.string()
    assert accepted.column("text").to_pylist() == ["the blue caf\u00e9"]
    q = quarantine.to_pylist()[0]
    assert q["reason"] == "text_invalid_utf8" and q["text"] == "caf\\xe9 on the left"


def string_column_with_invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string column as another tool could write it: bytes that are not UTF-8, unchecked."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_invalid_utf8_in_a_string_text_column_is_quarantined_like_a_binary_one(tmp_path):
    table = samples_table([row(0), row(1)])
    table = table.set_column(table.column_names.index("text"), "text", string_column_with_invalid_utf8(
        [b"the red square", b"caf\xe9 on the left"]))
    accepted, quarantine, _, report = v.check_samples(table, write_images(tmp_path, {"img0": encoded()}),
                                                      str(tmp_path))
    assert accepted.column("text").to_pylist() == ["the red square"]
    assert report.reasons == {"text_invalid_utf8": 1}
    assert quarantine.to_pylist()[0]["text"] == "caf\\xe9 on the left"


def test_cli_validate_invalid_utf8_in_another_string_column_is_one_line(dataset, capsys):
    import pyarrow.parquet as pq

    samples = storage.read_table(storage.join(dataset, "samples"))
    split = string_column_with_invalid_utf8([b"train", b"v\xffal", b"train"])
    samples = samples.set_column(samples.column_names.index("split"), "split", split)
    (part,) = storage.list_parts(storage.join(dataset, "samples"))
    pq.write_table(samples, part)
    assert cli.main(["validate", dataset]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert dataset in err and "column 'split': row 1 is not valid UTF-8" in err


def test_300_token_text_is_quarantined_with_its_token_count(tmp_path):
    # "a" is one CLIP BPE token ("a</w>"), so 300 of them are 300 tokens
    reason, detail = only_reason(tmp_path, row(0, text=" ".join(["a"] * 300)))
    assert reason == "text_too_long" and "300 BPE tokens" in detail and "75" in detail


def test_75_token_texts_are_accepted_76_are_not(tmp_path):
    # "&" (a lone byte, one token) keeps these off the tokenizer-free fast path
    rows = [row(0, text=" ".join(["a"] * 75)), row(1, text=" ".join(["a"] * 74 + ["&"])),
            row(2, text=" ".join(["a"] * 75 + ["&"]))]
    accepted, quarantine, _, _ = check(tmp_path, rows)
    assert accepted.column("sample_id").to_pylist() == ["s0", "s1"]
    assert "76 BPE tokens" in quarantine.column("detail")[0].as_py()


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=string.printable, min_size=1, max_size=120))
def test_tokenizer_free_fast_path_agrees_with_the_tokenizer(text):
    from clipvg.data.text import bpe_ids

    if text.strip() and plainly_fits(text, 75):
        assert 1 <= len(bpe_ids(text)) <= 75


# ---------------------------------------------------------------------------------------------
# Duplicates, extra columns, malformed input
# ---------------------------------------------------------------------------------------------


def test_duplicate_sample_ids(tmp_path):
    rows = [row(0), row(0, text="another text"), row(1), row(0, text="a third")]
    accepted, quarantine, _, report = check(tmp_path, rows)
    assert accepted.column("sample_id").to_pylist() == ["s0", "s1"]
    assert quarantine.column("input_row").to_pylist() == [1, 3]
    assert report.reasons == {"duplicate_sample_id": 2}
    assert "row 0" in quarantine.column("detail")[0].as_py()


def test_duplicate_samples(tmp_path):
    same = dict(text="the red square", box=[1.0, 2.0, 30.0, 40.0])
    rows = [row(0, **same), row(1, **same), row(2, **same, split="val"),
            row(3, **dict(same, box=[1.0, 2.0, 30.0, 41.0]))]
    accepted, quarantine, _, _ = check(tmp_path, rows)
    assert accepted.column("sample_id").to_pylist() == ["s0", "s2", "s3"]
    assert quarantine.to_pylist()[0]["reason"] == "duplicate_sample"
    kept, _, _, _ = check(tmp_path, rows, drop_duplicates=False)
    assert kept.num_rows == 4


def test_extra_columns_are_carried_to_both_outputs(tmp_path):
    extra = [pa.field("ann_id", pa.int64()), pa.field("note", pa.string())]
    rows = [row(0, ann_id=7, note="ok"), row(1, ann_id=8, note="bad", text="")]
    table = samples_table(rows, extra=extra)
    accepted, quarantine, _, _ = v.check_samples(
        table, write_images(tmp_path, {"img0": encoded()}), str(tmp_path))
    assert accepted.select(["ann_id", "note"]).to_pylist() == [{"ann_id": 7, "note": "ok"}]
    assert quarantine.select(["ann_id", "note"]).to_pylist() == [{"ann_id": 8, "note": "bad"}]
    assert accepted.schema.field("ann_id").type == pa.int64()


def test_missing_or_mistyped_column_raises_naming_it(tmp_path):
    table = samples_table([row(0)])
    images = write_images(tmp_path, {"img0": encoded()})
    with pytest.raises(SchemaError, match="'split'"):
        v.check_samples(table.drop_columns(["split"]), images, str(tmp_path))
    bad_box = table.set_column(3, "box", pa.array(["1,2,3,4"]))
    with pytest.raises(SchemaError, match="'box'"):
        v.check_samples(bad_box, images, str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Never lose a row (property test over random mixes)
# ---------------------------------------------------------------------------------------------

# kind -> (row overrides, expected reason); every kind is independent of the others
KINDS = {
    "good": ({}, None),
    "nan": ({"box": [float("nan"), 0.0, 5.0, 5.0]}, "box_not_finite"),
    "outside": ({"box": [500.0, 500.0, 600.0, 600.0]}, "box_outside_image"),
    "no_file": ({"image_id": "gone"}, "missing_image"),
    "corrupt": ({"image_id": "junk"}, "image_unreadable"),
    "blank": ({"text": " "}, "text_empty"),
    "null_id": ({"sample_id": None}, "malformed_entry"),
}


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    images = write_images(root, {"img0": encoded(), "gone": None, "junk": b"not an image"})
    return root, images


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(sorted(KINDS)), max_size=25))
def test_accepted_plus_quarantined_is_every_input_row(mixed_root, kinds):
    root, images = mixed_root
    rows = [row(i, **KINDS[k][0]) for i, k in enumerate(kinds)]
    accepted, quarantine, _, report = v.check_samples(samples_table(rows), images, str(root),
                                                      threads=2)
    assert accepted.num_rows + quarantine.num_rows == len(kinds) == report.input_rows
    assert (report.accepted, report.quarantined) == (accepted.num_rows, quarantine.num_rows)
    expected = {i: KINDS[k][1] for i, k in enumerate(kinds) if KINDS[k][1]}
    assert dict(zip(quarantine.column("input_row").to_pylist(),
                    quarantine.column("reason").to_pylist())) == expected
    assert accepted.column("sample_id").to_pylist() == [
        f"s{i}" for i, k in enumerate(kinds) if k == "good"]


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


def rejected_rows() -> pa.Table:
    """What an importer passes for an entry it could not parse."""
    return pa.Table.from_pylist([dict(sample_id="r9", text=None, reason="malformed_entry",
                                      detail="refs entry 9: no 'sentences'", input_row=9)])


def test_ingest_publishes_every_table_and_the_manifest_last(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    storage.write_json({"stale": True}, storage.join(root, "manifest.json"))
    images = write_images(root, {"img0": encoded(), "img1": encoded(60, 40)})
    rows = [row(0), row(1, image_id="img1", split="val"), row(2, text=""), row(3, split="val")]
    detections = pa.Table.from_pylist([dict(image_id="img0", det_id="d0", box=[1.0, 1.0, 9.0, 9.0],
                                            label="square", color=None, score=0.9)])
    seen = []
    real = v.check_samples
    monkeypatch.setattr(v, "check_samples", lambda *a, **k: seen.append(
        storage.exists(storage.join(root, "manifest.json"))) or real(*a, **k))
    report = v.ingest(root, samples_table(rows), images, manifest={"dataset": "handmade"},
                      rejected=rejected_rows(), extra_tables={"detections": detections})
    assert seen == [False]  # the stale manifest was removed before anything else
    assert (report.input_rows, report.accepted, report.quarantined, report.rejected) == (5, 3, 2, 1)
    assert report.reasons == {"malformed_entry": 1, "text_empty": 1}
    m = storage.read_json(storage.join(root, "manifest.json"))
    assert m["dataset"] == "handmade" and "stale" not in m
    assert m["counts"] == {"train": {"images": 1, "samples": 1}, "val": {"images": 2, "samples": 2}}
    assert m["validation"]["quarantined"] == 2 and m["validation"]["rejected"] == 1
    assert m["tables"] == ["samples", "images", "quarantine", "detections"]
    q = storage.read_table(storage.join(root, "quarantine")).to_pylist()
    assert [(r["input_row"], r["reason"]) for r in q] == [(2, "text_empty"), (9, "malformed_entry")]
    assert storage.read_table(storage.join(root, "samples")).num_rows == 3
    assert storage.read_table(storage.join(root, "images")).column("width").to_pylist() == [100, 60]
    assert storage.read_table(storage.join(root, "detections")).num_rows == 1


def test_ingest_writes_an_empty_quarantine_when_all_rows_are_valid(tmp_path):
    root = str(tmp_path)
    report = v.ingest(root, samples_table([row(0)]), write_images(root, {"img0": encoded()}),
                      manifest={})
    assert report.quarantined == 0
    q = storage.read_table(storage.join(root, "quarantine"))
    assert q.num_rows == 0 and {"reason", "detail", "input_row", "box"} <= set(q.column_names)


def test_ingest_leaves_unreadable_images_out_of_the_images_table(tmp_path):
    root = str(tmp_path)
    images = write_images(root, {"img0": encoded(), "bad": b"nope", "gone": None})
    report = v.ingest(root, samples_table([row(0), row(1, image_id="bad")]), images, manifest={})
    assert storage.read_table(storage.join(root, "images")).column("image_id").to_pylist() == [
        "img0"]
    assert report.images_dropped == 2 and report.reasons == {"image_unreadable": 1}


def test_packed_images_are_split_into_shards_and_read_back(tmp_path):
    from clipvg.data.dataset import GroundingDataset

    root = str(tmp_path)
    sizes = [(30 + i, 20 + i) for i in range(5)]
    images = pa.Table.from_pylist(
        [dict(image_id=f"p{i}", bytes=encoded(w, h), width=None, height=None)
         for i, (w, h) in enumerate(sizes)],
        schema=pa.schema([pa.field("image_id", pa.string()), pa.field("bytes", pa.binary()),
                          pa.field("width", pa.int32()), pa.field("height", pa.int32())]))
    rows = [row(i, image_id=f"p{i}", box=[1.0, 1.0, 10.0, 10.0]) for i in range(5)]
    v.ingest(root, samples_table(rows), images, manifest={}, images_per_shard=2)
    parts = [p.rsplit("/", 1)[-1] for p in storage.list_parts(storage.join(root, "images"))]
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    back = storage.read_table(storage.join(root, "images")).to_pylist()
    assert [(r["image_id"], r["width"], r["height"]) for r in back] == [
        (f"p{i}", w, h) for i, (w, h) in enumerate(sizes)]
    assert [r["bytes"] for r in back] == images.column("bytes").to_pylist()
    ds = GroundingDataset(root, "train")
    assert [ds[i][0][0].size for i in range(5)] == sizes


def test_ingest_to_s3(s3):
    root = s3.uri("ingest")
    rows = []
    for image_id, data in {"img0": encoded(), "gone": None}.items():
        if data is not None:
            storage.write_bytes(data, storage.join(root, f"files/{image_id}.png"), **s3.options)
        rows.append(dict(image_id=image_id, uri=f"files/{image_id}.png", width=None, height=None))
    images = pa.Table.from_pylist(rows, schema=pa.schema(IMAGE_FIELDS))
    report = v.ingest(root, samples_table([row(0), row(1, image_id="gone")]), images,
                      manifest={"dataset": "s3"}, **s3.options)
    assert (report.accepted, report.reasons) == (1, {"missing_image": 1})
    m = storage.read_json(storage.join(root, "manifest.json"), **s3.options)
    assert m["validation"]["accepted"] == 1
    q = storage.read_table(storage.join(root, "quarantine"), **s3.options).to_pylist()
    assert q[0]["sample_id"] == "s1" and "files/gone.png" in q[0]["detail"]
    assert v.validate_dataset(root, apply=False, **s3.options).quarantined == 0


# ---------------------------------------------------------------------------------------------
# validate_dataset and the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    """A valid dataset: 3 samples on 2 images (s2 alone on img1)."""
    root = str(tmp_path / "ds")
    images = write_images(root, {"img0": encoded(), "img1": encoded()})
    rows = [row(0), row(1, split="val"), row(2, image_id="img1")]
    v.ingest(root, samples_table(rows), images, manifest={"dataset": "handmade"})
    return root


def test_validate_dataset_moves_a_row_whose_image_was_deleted(dataset):
    storage.remove(storage.join(dataset, "files/img1.img"))
    before = storage.read_json(storage.join(dataset, "manifest.json"))
    report = v.validate_dataset(dataset, apply=False)
    assert (report.accepted, report.quarantined) == (2, 1)
    assert storage.read_table(storage.join(dataset, "samples")).num_rows == 3  # unchanged
    report = v.validate_dataset(dataset)
    assert report.reasons == {"missing_image": 1}
    samples = storage.read_table(storage.join(dataset, "samples"))
    quarantine = storage.read_table(storage.join(dataset, "quarantine"))
    assert samples.column("sample_id").to_pylist() == ["s0", "s1"]
    assert quarantine.column("sample_id").to_pylist() == ["s2"]  # nothing lost, nothing doubled
    parts = storage.list_parts(storage.join(dataset, "quarantine"))
    assert [p.rsplit("/", 1)[-1] for p in parts] == ["part-00000.parquet", "part-00001.parquet"]
    m = storage.read_json(storage.join(dataset, "manifest.json"))
    assert before["counts"]["train"]["samples"] == 2 and m["counts"]["train"]["samples"] == 1
    assert m["counts"]["val"]["samples"] == 1 and m["validation"]["quarantined"] == 1
    assert v.validate_dataset(dataset).quarantined == 0  # idempotent


def test_cli_validate_exit_codes_and_output(dataset, capsys):
    assert cli.main(["validate", dataset]) == 0
    assert "accepted 3 of 3; quarantined 0" in capsys.readouterr().out
    storage.remove(storage.join(dataset, "files/img1.img"))
    assert cli.main(["validate", dataset, "--check-only"]) == 1
    out = capsys.readouterr().out
    assert "accepted 2 of 3; quarantined 1: missing_image 1" in out
    assert "row 2 s2: missing_image (no file at " in out and "check only" in out
    assert storage.read_table(storage.join(dataset, "samples")).num_rows == 3
    assert cli.main(["validate", dataset]) == 1
    assert "moved 1 rows to" in capsys.readouterr().out
    assert cli.main(["validate", dataset]) == 0


def test_cli_validate_text_options(dataset, capsys):
    # every text is "the red square number N": 5 words = 5 tokens (all plain words)
    assert cli.main(["validate", dataset, "--check-only", "--max-text-tokens", "4"]) == 1
    assert "text_too_long 3" in capsys.readouterr().out


def test_cli_validate_no_dataset_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no dataset at" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_revalidation_follows_the_duplicate_policy_the_dataset_was_ingested_with(tmp_path):
    root = str(tmp_path / "d")
    images = write_images(root, {"img0": encoded()})
    rows = [row(0), row(1, text="the red square number 0")]  # row 1 repeats row 0's content
    v.ingest(root, samples_table(rows), images, manifest={"kind": "t"}, drop_duplicates=False)
    assert storage.read_json(storage.join(root, "manifest.json"))["validation_options"] == {
        "max_text_tokens": 75, "drop_duplicates": False}
    assert v.validate_dataset(root).quarantined == 0  # kept, as at ingest
    report = v.validate_dataset(root, drop_duplicates=True)  # asked for explicitly
    assert report.reasons == {"duplicate_sample": 1}
    assert storage.read_table(storage.join(root, "samples")).num_rows == 1
