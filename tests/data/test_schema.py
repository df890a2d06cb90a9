"""Schemas and the validator: valid tables pass, each kind of problem names column and row."""

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipvg.data import storage
from clipvg.data.schema import (
    BOX_TYPE,
    DETECTIONS,
    IMAGES,
    SAMPLES,
    SchemaError,
    conform,
    empty_table,
    table_problems,
    validate_table,
)


def samples(n=3, **override):
    cols = dict(
        sample_id=[f"s{i}" for i in range(n)],
        image_id=["img0"] * n,
        text=["the red circle"] * n,
        box=pa.array([[1.0, 2.0, 10.0, 20.0]] * n, type=BOX_TYPE),
        source=["gt"] * n,
        split=["train"] * n,
        dataset=["synthetic"] * n,
        expr_type=["attribute"] * n,
    )
    cols.update(override)
    return pa.table(cols)


def images(**override):
    cols = dict(
        image_id=["a", "b"],
        uri=pa.array(["files/a.png", None], pa.string()),
        bytes=pa.array([None, b"\x89PNG"], pa.binary()),
        width=pa.array([224, 224], pa.int32()),
        height=pa.array([224, 100], pa.int32()),
    )
    cols.update(override)
    return pa.table(cols)


def detections(**override):
    cols = dict(
        image_id=["a", "a"],
        det_id=["a-d0", "a-d1"],
        box=pa.array([[0, 0, 5, 5], [1, 1, 2, 2]], type=BOX_TYPE),
        label=["circle", "star"],
        color=pa.array(["red", None], pa.string()),
        score=pa.array([0.9, 0.2], pa.float32()),
    )
    cols.update(override)
    return pa.table(cols)


def test_valid_tables_pass_and_extra_columns_are_allowed():
    validate_table(samples(), SAMPLES)
    validate_table(samples().append_column("note", pa.array(["x"] * 3)), "samples")
    validate_table(samples().drop(["expr_type"]), SAMPLES)  # optional column
    validate_table(images(), IMAGES)
    validate_table(images().drop(["bytes"]).slice(0, 1), IMAGES)  # files only
    validate_table(detections(), DETECTIONS)
    for spec in (SAMPLES, IMAGES, DETECTIONS):
        validate_table(empty_table(spec), spec)


def test_missing_column_and_wrong_type_are_named():
    with pytest.raises(SchemaError, match=r"(?s)samples table at here.*'text'.*missing column"):
        validate_table(samples().drop(["text"]), SAMPLES, where="here")
    bad = samples(box=pa.array([[1.0, 2.0, 3.0, 4.0]] * 3, type=pa.list_(pa.float64())))
    with pytest.raises(SchemaError, match=r"(?s)'box'.*expected fixed_size_list"):
        validate_table(bad, SAMPLES)


def test_null_duplicate_and_value_problems_name_the_row():
    bad = samples(text=pa.array(["a", None, "c"], pa.string()))
    with pytest.raises(SchemaError, match=r"'text', row 1: null"):
        validate_table(bad, SAMPLES)
    with pytest.raises(SchemaError, match=r"'sample_id', row 2: duplicate 's0'"):
        validate_table(samples(sample_id=["s0", "s1", "s0"]), SAMPLES)
    boxes = pa.array([[0, 0, 1, 1], [5, 0, 1, 1], [0, 0, math.nan, 1]], type=BOX_TYPE)
    problems = table_problems(samples(box=boxes), SAMPLES)
    assert [(r, c) for r, c, _ in problems] == [(1, "box"), (2, "box")]
    with pytest.raises(SchemaError, match=r"'expr_type', row 0: unknown"):
        validate_table(samples(expr_type=["colour", "spatial", None]), SAMPLES)


def test_images_need_uri_or_bytes_and_positive_size():
    none = images(uri=pa.array(["x", None], pa.string()), bytes=pa.array([None, None], pa.binary()))
    with pytest.raises(SchemaError, match=r"'uri', row 1: neither uri nor bytes"):
        validate_table(none, IMAGES)
    with pytest.raises(SchemaError, match=r"'uri', row 1: neither"):
        validate_table(images().drop(["bytes"]), IMAGES)
    with pytest.raises(SchemaError, match=r"'height', row 0: must be > 0"):
        validate_table(images(height=pa.array([0, 5], pa.int32())), IMAGES)
    with pytest.raises(SchemaError, match=r"'score', row 1: must be in \[0, 1\]"):
        validate_table(detections(score=pa.array([0.5, 1.5], pa.float32())), DETECTIONS)


def test_string_variants_are_accepted_and_conform_casts():
    validate_table(samples(text=pa.array(["a"] * 3, pa.large_string())), SAMPLES)
    loose = samples(box=pa.array([[1.0, 2.0, 3.0, 4.0]] * 3, type=pa.list_(pa.float64())))
    fixed = conform(loose.append_column("extra", pa.array([1, 2, 3])), SAMPLES)
    assert fixed.schema.field("box").type == BOX_TYPE
    assert fixed.column_names[-1] == "extra"
    short = samples(box=pa.array([[1.0, 2.0, 3.0]] * 3, type=pa.list_(pa.float64())))
    with pytest.raises(SchemaError, match="'box': cannot cast"):
        conform(short, SAMPLES)


def test_schema_survives_a_parquet_round_trip(tmp_path):
    for name, table in (("samples", samples()), ("images", images()),
                        ("detections", detections())):
        storage.write_table(table, str(tmp_path / name))
        back = storage.read_table(str(tmp_path / name))
        validate_table(back, name)
        assert back.equals(table)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-1e4, 1e4, width=32), min_size=4, max_size=4),
                min_size=1, max_size=6))
def test_box_rule_matches_a_plain_definition(rows):
    table = samples(len(rows), box=pa.array(rows, type=BOX_TYPE))
    expected = {i for i, b in enumerate(rows) if b[2] < b[0] or b[3] < b[1]}
    assert {r for r, c, _ in table_problems(table, SAMPLES)} == expected
