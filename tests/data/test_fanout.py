"""Decode-once fan-out (no Ray): canvas rows, slot bookkeeping, tokenizing once, failures."""

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from clipvg.data.fanout import (FanOutSpec, concat_rows, decode, fan_out, group_samples,
                                loader_boxes, padding_mask, tokenize_texts)
from clipvg.data.text import tokenize
from clipvg.data.transforms import eval_canvas, eval_transform

SPEC = FanOutSpec(size=32, context_length=8, slots=3)


def png(w=40, h=30, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 90).save(buf, format="PNG")
    return buf.getvalue()


def samples(boxes, texts, box_trunc=None) -> pa.Table:
    n = len(texts)
    cols = dict(sample_id=[f"s{i}" for i in range(n)], image_id=["a", "b", "a"][:n], text=texts,
                box=pa.array(boxes, pa.list_(pa.float32(), 4)))
    if box_trunc is not None:
        cols["box_trunc"] = pa.array(box_trunc, pa.list_(pa.float32(), 4))
    return pa.table(cols)


def planned(t: pa.Table) -> pa.Table:
    """Add the plan's columns (tokens, text_error), as streaming.plan_split does."""
    ids, errors = tokenize_texts(t.column("text").to_pylist(), SPEC)
    t = t.append_column("tokens", pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), 8))
    return t.append_column("text_error", pa.array(errors))


def test_loader_boxes_prefer_the_official_integer_box():
    t = samples([[0.6, 1.5, 1.2, 3.9]], ["x"])
    assert loader_boxes(t, False).tolist() == [[pytest.approx(0.6), 1.5, pytest.approx(1.2), pytest.approx(3.9)]]
    assert loader_boxes(t, True).tolist() == [[0, 1, 1, 3]]  # each coordinate truncated
    # COCO xywh [0.6, 1.5, 0.6, 2.4]: official int(x)+int(w) = 0, int(y)+int(h) = 3
    t = samples([[0.6, 1.5, 1.2, 3.9]], ["x"], box_trunc=[[0, 1, 0, 3]])
    assert loader_boxes(t, True).tolist() == [[0, 1, 0, 3]]


def test_tokenize_texts_marks_only_the_bad_text():
    spec = FanOutSpec(context_length=5, text_overflow="error")  # 3 BPE tokens fit
    ids, errors = tokenize_texts(["Red Ball", "   ", "one two three four five"], spec)
    assert errors[0] == "" and "empty" in errors[1] and "TextTooLongError" in errors[2]
    want = tokenize(["red ball"], context_length=5).tokens[0].numpy()
    assert ids[0].tolist() == want.tolist() and ids[1].tolist() == [0] * 5


def test_eval_canvas_targets_equal_the_per_sample_transform_row_by_row():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 45, 3), np.uint8))
    boxes = np.array([[1.5, 2, 20, 28], [-5, -5, 60, 40], [3, 3, 3, 9],
                      [np.nan, 0, 1, 1], [10, 10, 5, 20]], np.float64)
    canvas = eval_canvas(img, 32)
    targets, valid = canvas.targets(boxes)
    assert valid.tolist() == [True, True, True, False, False]
    for box, target in zip(boxes[:3], targets[:3]):
        assert np.array_equal(target, eval_transform(img, box, "t", size=32).box.numpy())


def test_an_eval_group_is_one_canvas_row_with_a_slot_per_expression():
    t = planned(samples([[1, 1, 10, 10], [2, 2, 20, 20], [5, 5, 6, 6]], ["left one", "", "right"]))
    groups = group_samples(t, "image_id", False)
    assert groups["a"].rows == [0, 2] and groups["b"].rows == [1]
    row = fan_out(decode(png()), groups["a"], SPEC, "a")
    assert row["image"].shape == (1, 3, 32, 32) and row["image"].dtype == np.uint8
    assert row["sample_row"].tolist() == [[0, 2, -1]] and row["ok"].tolist() == [[True, True, False]]
    bad = fan_out(decode(png()), groups["b"], SPEC, "b")  # the empty text fails its slot only
    assert bad["ok"].tolist() == [[False, False, False]] and bad["error"][0].startswith("0\t")
    want_mask = eval_canvas(decode(png()), 32).pixel_mask.astype(bool)  # 40x30 -> 32x24, centred
    assert row["placed"].tolist() == [[4, 0, 24, 32]]  # top, left, height, width by hand
    assert np.array_equal(padding_mask(row["placed"], 32)[0], want_mask)


def test_a_failed_image_reports_every_sample_of_its_group():
    t = planned(samples([[1, 1, 10, 10], [2, 2, 20, 20], [5, 5, 6, 6]], ["a", "b", "c"]))
    with pytest.raises(ValueError, match="tokenize them first"):
        group_samples(samples([[1, 1, 10, 10]], ["a"]), "image_id", False)
    group = group_samples(t, "image_id", False)["a"]
    row = fan_out(None, group, SPEC, "a", failure="s3://x/a.jpg: FileNotFoundError")
    assert row["sample_row"].tolist() == [[0, 2, -1]] and not row["ok"].any()
    assert row["error"][0].split("\n") == ["0\ts3://x/a.jpg: FileNotFoundError",
                                           "1\ts3://x/a.jpg: FileNotFoundError"]
    train = fan_out(None, group, FanOutSpec(size=32, context_length=8, train=True), "a", failure="gone")
    assert train["sample_row"].tolist() == [[0], [2]] and list(train["error"]) == ["0\tgone"] * 2
    assert concat_rows([], SPEC)["image"].shape == (0, 3, 32, 32)


def test_decode_gives_rgb_and_fails_on_a_truncated_file():
    assert decode(png(mode="L")).mode == "RGB"
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(data, "JPEG")
    with pytest.raises(OSError):
        decode(data.getvalue()[: len(data.getvalue()) // 2])


def test_decode_error_of_unknown_bytes_names_no_file_object():
    with pytest.raises(OSError) as err:
        decode(b"not an image")
    assert "object at 0x" not in str(err.value) and "12 bytes" in str(err.value)
