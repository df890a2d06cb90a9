"""The scorer of one replica without Ray (clipvg.engine.reliability): canvas rows built by
clipvg.data.fanout in-process, pixel boxes vs the transforms' geometry, model folders on S3."""


import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from clipvg.config import ModelConfig
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec, fan_out, group_samples, tokenize_texts
from clipvg.data.schema import BOX_TYPE
from clipvg.data.transforms import canvas_to_image_box, eval_canvas
from clipvg.engine.reliability import ReliabilityScorer, _chunks, canvas_to_pixels, load_measurer
from clipvg.model import build_model
from clipvg.model.io import CONFIG_FILE, WEIGHTS_FILE, export_model

TINY = ModelConfig(
    arch={"embed_dim": 32, "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2,
                                          "head_width": 16},
          "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    image_size=64, context_length=16, taps=[0, 1])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


def test_chunks_never_split_a_canvas_and_respect_the_limit():
    assert [(s.start, s.stop) for s in _chunks([3, 3, 3, 7, 1, 0, 2], 6)] == [(0, 2), (2, 3), (3, 4), (4, 7)]
    assert list(_chunks([], 4)) == []


def test_canvas_to_pixels_inverts_the_eval_letterbox():
    image = Image.new("RGB", (90, 37))
    canvas = eval_canvas(image, 64)
    box = np.array([[10.0, 3.0, 50.0, 30.0]])
    target = torch.from_numpy(canvas.targets(box)[0])
    rows = np.flatnonzero(canvas.pixel_mask.min(1) == 0)
    placed = np.array([[rows[0], 0, rows.size, 64]])
    got = canvas_to_pixels(target, placed, np.array([[90, 37]]), 64)
    assert np.allclose(got, box, atol=1e-4)
    ref = canvas_to_image_box(target, canvas.scale, canvas.offset, 64)
    assert np.allclose(got, ref.numpy(), atol=1e-4)
    whole = canvas_to_pixels(torch.tensor([[0.5, 0.5, 2.0, 2.0]]), placed, np.array([[90, 37]]), 64)
    assert np.allclose(whole, [[0, 0, 90, 37]])  # clamped to the canvas, then to the image


def canvas_rows(n_images: int = 3):
    """Eval canvas rows (fan-out, 2 slots per image; slot 1 of image 1 has an invalid box)."""
    spec = FanOutSpec(size=64, context_length=16, slots=2)
    rng = np.random.default_rng(0)
    ids, texts, boxes, image_ids, images = [], [], [], [], {}
    for i in range(n_images):
        images[f"im{i}"] = Image.fromarray(rng.integers(0, 255, (40 + 10 * i, 70, 3), dtype=np.uint8))
        for k in range(2):
            ids.append(f"im{i}-{k}"), texts.append("the red circle"), image_ids.append(f"im{i}")
            boxes.append([5.0, 5.0, 30.0, 20.0] if (i, k) != (1, 1) else [30.0, 5.0, 5.0, 20.0])
    samples = pa.table({"sample_id": ids, "image_id": image_ids, "text": texts,
                        "box": pa.array(boxes, BOX_TYPE)})
    tokens, errors = tokenize_texts(texts, spec)
    samples = samples.append_column("tokens", pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), 16))
    samples = samples.append_column("text_error", pa.array(errors, pa.string()))
    groups = group_samples(samples, "image_id", int_truncation=False)
    parts = [fan_out(images[i], groups[i], spec, i) for i in images]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return batch, ids, {i: im.size for i, im in images.items()}


def test_scorer_rows_match_a_direct_forward_and_keep_failed_slots(model):
    batch, ids, sizes = canvas_rows()
    scorer = ReliabilityScorer(model, ids, sizes, size=64, batch_size=3, device="cpu")
    rows = scorer(batch)
    assert sorted(rows.column("sample_id").to_pylist()) == sorted(ids)  # every slot, once
    bad = rows.filter(pa.compute.equal(rows.column("sample_id"), "im1-1")).to_pylist()[0]
    assert bad["reliability"] is None and bad["pred_box"] is None and "invalid box" in bad["error"]
    ok = rows.filter(pa.compute.is_valid(rows.column("reliability")))
    assert ok.num_rows == len(ids) - 1 and ok.column("error").null_count == ok.num_rows
    again = ReliabilityScorer(model, ids, sizes, size=64, batch_size=64, device="cpu")(batch)
    by_id = {r["sample_id"]: r for r in again.to_pylist()}
    for r in ok.to_pylist():  # chunking (3 vs 64 samples per call) changes nothing
        assert r["reliability"] == pytest.approx(by_id[r["sample_id"]]["reliability"], abs=1e-5)


def test_load_measurer_from_object_storage(s3, tmp_path, model):
    folder = export_model(model, tmp_path / "m")
    uri = s3.uri("measurer")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        storage.write_bytes((folder / name).read_bytes(), storage.join(uri, name), **s3.options)
    loaded = load_measurer(uri, **s3.options)
    assert not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
