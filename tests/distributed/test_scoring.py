"""Reliability scoring on a Ray Data actor pool, through ``clipvg score`` in this process: every
sample exactly once, the official IoU of an independent forward pass, the pixel <-> canvas round
trip, unreadable images kept as null rows. One scoring pass for the module (actor start-up, i.e.
importing torch and open_clip in two actors, is most of its ~30 s), with the measurer, the
samples and the scores on S3 (moto) through ``storage.endpoint_url`` only."""

import contextlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from clipvg.cli import main
from clipvg.config import load_config
from clipvg.curriculum.selection import SCORES_SCHEMA
from clipvg.data import storage
from clipvg.data.fanout import FanOutSpec
from clipvg.data.schema import BOX_TYPE
from clipvg.data.text import prepare_text, tokenize
from clipvg.data.transforms import canvas_to_image_box, eval_transform
from clipvg.data.validate import ingest
from clipvg.distributed import scoring
from clipvg.engine.metrics import eval_iou
from clipvg.model import build_model
from clipvg.model.io import export_model, load_model
from clipvg.ops.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from tiny_train import TINY_TRAIN

# non-square images of several shapes, so the letterbox offsets and scales are not trivial;
# the last image's file is corrupted after ingest
SIZES = [(90, 60), (50, 80), (64, 64), (100, 37), (41, 70), (77, 52), (60, 99)] * 2 + [(70, 50)]
BAD = f"im{len(SIZES) - 1:02d}.png"
PER_IMAGE, GOOD, OWN = 3, 30, 4  # 30 readable + 3 unreadable + 4 own-prediction samples = 37:
N = GOOD + PER_IMAGE + OWN  # divides evenly neither by 2 actors nor by batches of 8
WORDS = ("red", "blue", "small", "left", "circle", "square", "the", "near", "big", "star")
OVERRIDES = [*TINY_TRAIN, "data.box_int_truncation=false", "curriculum.scoring.actors=2",
             "curriculum.scoring.batch_size=8", "curriculum.scoring.cpus_per_actor=0.5",
             "curriculum.scoring.threads_per_actor=1", "curriculum.histogram_bins=20"]


def write_world(root: str, seed: int = 0) -> pa.Table:
    """A tiny dataset with noise images of SIZES and PER_IMAGE random boxes each; returns samples."""
    rng = np.random.default_rng(seed)
    samples, images = [], []
    for i, (w, h) in enumerate(SIZES):
        image_id = f"im{i:02d}.png"
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        storage.write_bytes(buf.getvalue(), storage.join(root, "files", image_id))
        images.append(dict(image_id=image_id, uri=f"files/{image_id}", width=w, height=h))
        for k in range(PER_IMAGE):
            x0, y0 = rng.uniform(0, 0.6 * w), rng.uniform(0, 0.6 * h)
            box = [x0, y0, x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.1, 0.4) * h]
            samples.append(dict(sample_id=f"{image_id}-{k}", image_id=image_id, box=box,
                                text=" ".join(rng.choice(WORDS, 4)), source="template",
                                split="train", dataset="tiny"))
    s = pa.Table.from_pylist(samples).cast(pa.schema(
        [pa.field(n, BOX_TYPE if n == "box" else pa.string()) for n in samples[0]]))
    i = pa.Table.from_pylist(images).cast(pa.schema(
        [("image_id", pa.string()), ("uri", pa.string()), ("width", pa.int32()), ("height", pa.int32())]))
    ingest(root, s, i, manifest=dict(kind="clipvg-dataset", dataset="tiny"))
    with open(f"{root}/files/{BAD}", "wb") as f:  # valid at ingest, unreadable when scored
        f.write(b"\x89PNG\r\n\x1a\n this is not an image")
    return storage.read_table(storage.join(root, "samples"))


def direct(model, root: str, row: dict, cfg) -> dict:
    """The measurer on the eval-preprocessed image of one sample, outside Ray: the official
    IoU and the clamped prediction mapped to pixels with clipvg.data.transforms' geometry."""
    image = Image.open(f"{root}/files/{row['image_id']}").convert("RGB")
    sample = eval_transform(image, row["box"], prepare_text(row["text"]), size=cfg.model.image_size)
    tok = tokenize([sample.text], context_length=cfg.model.context_length)
    with torch.no_grad():
        pred = model(sample.image[None], sample.pixel_mask[None].long(), tok.tokens, tok.token_mask)
    clamped = xyxy_to_cxcywh(cxcywh_to_xyxy(pred).clamp(0, 1))
    box = canvas_to_image_box(clamped, sample.scale, sample.offset, cfg.model.image_size)[0]
    w, h = image.size
    inside = bool((box[:2] > 0).all() and box[2] < w and box[3] < h)
    box = box.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=box.dtype))
    return dict(iou=eval_iou(pred, sample.box[None]).item(), box=box.numpy(), inside=inside)


def own_prediction_rows(rows: list[dict], refs: list[dict]) -> list[dict]:
    """Samples whose pseudo box is the measurer's own prediction (in pixels), for predictions
    the image edge does not clip (a clipped one cannot score 1: the rest lies on padding)."""
    own = [dict(row, sample_id=row["sample_id"] + "-own", box=ref["box"].tolist())
           for row, ref in zip(rows, refs) if ref["inside"]][:OWN]
    assert len(own) == OWN, "too few unclipped predictions in the tiny world"
    return own


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scoring")
    root = str(tmp / "world")
    world = write_world(root)
    cfg = load_config(None, [*OVERRIDES, f"storage.root={tmp}", f"data.uri={root}"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    model_dir = str(export_model(model, tmp / "measurer"))
    model = load_model(model_dir)
    good = world.filter(pc.not_equal(world.column("image_id"), BAD)).slice(0, GOOD)
    refs = [direct(model, root, row, cfg) for row in good.to_pylist()]
    own = own_prediction_rows(good.to_pylist(), refs)
    refs += [direct(model, root, row, cfg) for row in own]
    samples = pa.concat_tables([good, world.filter(pc.equal(world.column("image_id"), BAD)),
                                pa.Table.from_pylist(own, schema=world.schema)])
    samples_uri, out = str(tmp / "samples"), str(tmp / "scores")
    storage.write_table(samples, samples_uri)
    return dict(tmp=tmp, root=root, samples=samples, samples_uri=samples_uri, out=out, cfg=cfg,
                model_dir=model_dir, refs=dict(zip(samples.column("sample_id").to_pylist()[:GOOD]
                                                   + [r["sample_id"] for r in own], refs)))


@pytest.fixture(scope="module")
def scored(ray_local, s3, setup):
    """``clipvg score`` in this process (init_ray keeps the module's Ray): table + stdout.

    The measurer, the samples table and the output are on S3 (moto), with the endpoint given by
    ``storage.endpoint_url`` only: ``AWS_ENDPOINT_URL`` points at a trap (tests/storage_trap.py)
    in this process while the command runs, and no connection may reach it."""
    from storage_trap import trap

    s, text, root = setup, io.StringIO(), s3.uri("score")
    model, samples, s["out"] = f"{root}/measurer", f"{root}/samples", f"{root}/scores"
    storage.upload_folder(s["model_dir"], model, **s3.options)
    storage.write_table(s["samples"], samples, **s3.options)
    with pytest.MonkeyPatch.context() as mp, trap(mp) as t, contextlib.redirect_stdout(text):
        rc = main(["score", "--model", model, "--samples", samples, "--out", s["out"],
                   *OVERRIDES, f"data.uri={s['root']}", f"storage.root={root}",
                   f"storage.endpoint_url={s3.endpoint_url}"])
    assert rc == 0 and t.connections == 0
    return storage.read_table(s["out"], **s3.options), text.getvalue()


def test_one_row_per_sample_in_input_order(setup, scored):
    scores, _ = scored
    assert scores.schema == SCORES_SCHEMA and scores.num_rows == N
    assert scores.column("sample_id").to_pylist() == setup["samples"].column("sample_id").to_pylist()
    assert scores.column("image_id").to_pylist() == setup["samples"].column("image_id").to_pylist()
    assert set(scores.column("measurer").to_pylist()) == {"measurer"}  # the model folder's name
    assert set(scores.column("source").to_pylist()) == {"template"}  # the samples' one source
    ok = scores.filter(pc.is_valid(scores.column("reliability")))
    r = ok.column("reliability").to_numpy()
    assert ok.num_rows == N - PER_IMAGE and ((r >= 0) & (r <= 1)).all()
    assert ok.column("error").null_count == ok.num_rows
    sizes = dict(zip((f"im{i:02d}.png" for i in range(len(SIZES))), SIZES))
    for image_id, box in zip(ok.column("image_id").to_pylist(), ok.column("pred_box").to_pylist()):
        w, h = sizes[image_id]
        assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h


def test_reliability_and_pixel_box_equal_an_independent_forward_pass(setup, scored):
    rows = {r["sample_id"]: r for r in scored[0].to_pylist()}
    for sid, ref in setup["refs"].items():
        assert rows[sid]["reliability"] == pytest.approx(ref["iou"], abs=1e-4), sid
        assert np.allclose(rows[sid]["pred_box"], ref["box"], atol=1e-3), sid


def test_own_prediction_as_pseudo_box_scores_one(scored):
    """pixels -> canvas target (scorer) of canvas -> pixels (checked equal to the scorer's
    pred_box above): the prediction itself, so IoU 1 up to float32 rounding."""
    own = scored[0].filter(pc.ends_with(scored[0].column("sample_id"), "-own"))
    assert own.num_rows == OWN
    assert (own.column("reliability").to_numpy() > 0.9999).all()


def test_unreadable_image_gives_null_rows_with_the_error(scored):
    bad = scored[0].filter(pc.equal(scored[0].column("image_id"), BAD))
    assert bad.num_rows == PER_IMAGE and bad.column("reliability").null_count == PER_IMAGE
    assert bad.column("pred_box").null_count == PER_IMAGE
    assert all(BAD in e for e in bad.column("error").to_pylist())


def test_cli_writes_histogram_and_prints_counts(setup, scored, s3):
    out = setup["out"]  # on S3 (see scored)
    record = storage.read_json(f"{out}/histogram.json", **s3.options)
    assert record["bins"] == 20 and record["null"] == PER_IMAGE and record["n"] == N
    assert sum(record["counts"]) + record["zero"] == N - PER_IMAGE
    assert record["measurer"] == "measurer" and record["source"] == "template"
    assert storage.read_bytes(f"{out}/histogram.png", **s3.options)[:4] == b"\x89PNG"
    text = scored[1]
    assert f"{N} samples: {N - PER_IMAGE} scored, {PER_IMAGE} unreadable" in text
    assert "subset sizes (r > h): 0: " in text and "histogram.png" in text


def test_exactly_once_check_names_the_offending_sample():
    with pytest.raises(scoring.ScoringError, match="'b' was scored more than once"):
        scoring.check_exactly_once(["a", "b", "c"], ["a", "b", "b", "c"])
    with pytest.raises(scoring.ScoringError, match="'c' got no score row"):
        scoring.check_exactly_once(["a", "b", "c"], ["b", "a"])
    with pytest.raises(scoring.ScoringError, match="'z' was scored but is not among"):
        scoring.check_exactly_once(["a"], ["a", "z"])
    samples = pa.table({"sample_id": ["a", "b"], "image_id": ["i", "i"]})
    rows = pa.table({"sample_id": ["a"], "reliability": pa.array([0.5], pa.float32()),
                     "pred_box": pa.array([[0, 0, 1, 1]], BOX_TYPE), "error": pa.array([None], pa.string())})
    with pytest.raises(scoring.ScoringError, match="'b' got no score row"):
        scoring.scores_table(samples, rows, measurer="m", source="s")


def test_model_with_another_canvas_is_refused(setup):
    cfg = load_config(None, [*OVERRIDES, "model.image_size=80"])
    with pytest.raises(ValueError, match=r"\(image_size, context_length\) = \(64, 24\)"):
        scoring.check_model(setup["model_dir"], FanOutSpec.from_config(cfg, train=False))
