"""``clipvg evaluate`` on official-format data: split files in the three tuple layouts (unc,
referit, flickr; tests/official_eval.py) imported with ``import-official``, the committed official
fixture checkpoint converted with ``convert-official``, evaluated on a Ray Data pool of 2 actors.

Each dataset is evaluated once for the module (three passes: unc local with an unreadable
image, referit on S3, flickr local over stale results with --overwrite); the accuracies, the
shuffled-text control and each sample's IoU are compared with single-process
``engine.steps.evaluate`` over the local engine's loader of the same split. Half of the boxes are
the model's own prediction (so Acc@0.5 is neither 0 nor 1); row counts are odd (7, 5, 3, ...),
so they divide neither among the 2 actors nor into the control's chunks of 4.
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import partial
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipvg.cli import main
from clipvg.config import load_config
from clipvg.data import storage
from clipvg.engine.batching import SampleTransform, build_loader, collate
from clipvg.data.dataset import GroundingDataset
from clipvg.data.text import prepare_text, tokenize
from clipvg.distributed import evaluate, evaluate_cli
from clipvg.engine.control import TextShuffler
from clipvg.engine.metrics import eval_iou
from clipvg.engine.steps import evaluate as single_process_evaluate, forward
from clipvg.errors import UserError
from clipvg.model.io import load_model
from clipvg.predict import predict_box
from official_eval import convert_fixture, import_split_files, random_rows, write_images, write_split_files

POOL = ["curriculum.scoring.actors=2", "curriculum.scoring.cpus_per_actor=0.5",
        "curriculum.scoring.batch_size=4", "curriculum.scoring.threads_per_actor=1",
        "scaling.data_cpus=0.5", "train.eval_batch_size=4"]  # control chunks of 4 rows
SIZES = {"a.jpg": (120, 90), "b.jpg": (90, 130), "c.jpg": (100, 100), "d.jpg": (140, 70),
         "e.jpg": (80, 110), "bad.jpg": (96, 64)}
LAYOUT = {  # key -> split -> expressions per image (bad.jpg is made unreadable after import)
    "unc": {"val": {"a.jpg": 3, "b.jpg": 2, "c.jpg": 2}, "testA": {"d.jpg": 3, "e.jpg": 2},
            "testB": {"c.jpg": 1, "bad.jpg": 2}},
    "referit": {"test": {"a.jpg": 2, "d.jpg": 3, "e.jpg": 2}},
    "flickr": {"test": {"b.jpg": 4, "c.jpg": 3, "a.jpg": 2}},
}
BAD_ROWS = 2


def own_prediction_boxes(model, image_dir, rows: list[tuple]) -> list[tuple]:
    """Every other row's box replaced by the model's own prediction (IoU ~1 after the official
    integer truncation), when that box is not degenerate."""
    out = []
    for k, (name, box, text) in enumerate(rows):
        if k % 2 == 0 and name != "bad.jpg":
            pred = predict_box(model, model.config, Image.open(image_dir / name).convert("RGB"), text)
            if pred[2] - pred[0] > 6 and pred[3] - pred[1] > 6:
                box = pred
        out.append((name, box, text))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3):
    """The converted checkpoint and one imported dataset per layout (referit on S3)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    model_dir = convert_fixture(tmp / "model")
    model = load_model(model_dir)
    image_dir = tmp / "images"
    write_images(image_dir, SIZES)
    data, expected, opts = {}, {}, {}
    for seed, (key, splits) in enumerate(LAYOUT.items()):
        rows = {s: own_prediction_boxes(model, image_dir, random_rows(SIZES, per, seed * 10 + i))
                for i, (s, per) in enumerate(splits.items())}
        write_split_files(tmp / "splits", key, rows)
        out, options = (s3.uri(key), s3.options) if key == "referit" else (str(tmp / key), {})
        import_split_files(key, tmp / "splits", image_dir, out, list(splits), **options)
        data[key], opts[key], expected[key] = out, options, {s: len(r) for s, r in rows.items()}
    storage.write_bytes(b"\xff\xd8 truncated, not a JPEG", storage.join(data["unc"], "files", "bad.jpg"))
    s3_model = s3.uri("model")
    for name in ("model.safetensors", "model_config.json"):
        storage.write_bytes((tmp / "model" / name).read_bytes(), f"{s3_model}/{name}", **s3.options)
    return dict(tmp=tmp, model_dir=model_dir, s3_model=s3_model, model=model, data=data, options=opts,
                rows=expected)


def run_cli(argv: list[str]) -> tuple[int, str]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["evaluate", *argv])
    return rc, text.getvalue()


def outputs(out: str, **options) -> dict:
    return dict(metrics=storage.read_json(f"{out}/metrics.json", **options),
                pred=storage.read_table(f"{out}/predictions", **options),
                md=storage.read_bytes(f"{out}/metrics.md", **options).decode(),
                png=storage.read_bytes(f"{out}/worst.png", **options))


@pytest.fixture(scope="module")
def runs(ray_local, world, s3):
    """The three evaluations (see module doc): key -> outputs + stdout."""
    w, done = world, {}
    rc, log = run_cli(["--checkpoint", w["model_dir"], "--data", w["data"]["unc"], "--splits",
                       "val,testA,testB", "--out", str(w["tmp"] / "eval-unc"), *POOL])
    assert rc == 0, log
    done["unc"] = dict(outputs(str(w["tmp"] / "eval-unc")), log=log)
    stale = w["tmp"] / "eval-flickr"
    stale.mkdir()
    (stale / "metrics.json").write_text('{"stale": true}')
    (stale / "worst.png").write_bytes(b"stale")
    rc, log = run_cli(["--checkpoint", w["model_dir"], "--data", w["data"]["flickr"], "--splits", "test",
                       "--out", str(stale), "--overwrite", *POOL])
    assert rc == 0, log
    done["flickr"] = dict(outputs(str(stale)), log=log)
    out = s3.uri("eval-referit")
    # the driver's and the Ray workers' S3 calls must use --endpoint-url: AWS_ENDPOINT_URL is the
    # session's trap (tests/conftest.py), in this process and in ray_local's workers
    rc, log = run_cli(["--checkpoint", w["s3_model"], "--data", w["data"]["referit"], "--splits",
                       "test", "--out", out, "--endpoint-url", s3.endpoint_url, *POOL])
    assert rc == 0, log
    done["referit"] = dict(outputs(out, **s3.options), log=log, out=out)
    return done


def local_evaluate(world, key: str, split: str, samples=None, shuffled_text: bool = True):
    """engine.steps.evaluate over the local engine's loader (``samples``: these rows only)."""
    cfg, uri, options = load_config(None, POOL), world["data"][key], world["options"][key]
    if samples is None:
        loader = build_loader(cfg, uri, split, train=False, **options)
    else:
        ds = GroundingDataset(uri, split, SampleTransform(cfg.data, cfg.model.image_size, False),
                              official_boxes=cfg.data.box_int_truncation, samples=samples, **options)
        loader = DataLoader(ds, batch_size=cfg.train.eval_batch_size, collate_fn=partial(
            collate, context_length=cfg.model.context_length,
            image_ids={r.sample_id: r.image_id for r in ds.records}))
    return single_process_evaluate(world["model"], loader, shuffled_text=shuffled_text)


CASES = [("unc", "val"), ("unc", "testA"), ("referit", "test"), ("flickr", "test")]


@pytest.mark.parametrize("key,split", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_accuracy_and_control_equal_single_process_evaluate(world, runs, key, split):
    """Acc@0.5 (overall, per type), the shuffled-text control and every IoU as
    engine.steps.evaluate computes them on the same split in one process."""
    got = runs[key]["metrics"]["splits"][split]
    ref = local_evaluate(world, key, split)
    assert got["rows"] == got["total"] == ref.total == world["rows"][key][split]
    assert got["failed"] == 0 and got["failed_samples"] == []
    assert got["acc"] == ref.accuracy and got["correct"] == ref.meter.correct
    assert 0 < ref.meter.correct < ref.total, "the fixture should give hits and misses"
    assert got["per_type"] == ref.meter.group_accuracy() == {"unknown": ref.accuracy}
    control = ref.summary()["shuffled_text"]
    assert got["shuffled_text"] == {k: control[k] for k in ("acc", "total", "skipped", "per_type")}
    pred = runs[key]["pred"].filter(pc.field("split") == split)
    for sid, iou, correct in zip(*(pred.column(c).to_pylist() for c in ("sample_id", "iou", "correct"))):
        assert iou == pytest.approx(ref.ious[sid], abs=1e-4), sid
        assert correct == (ref.ious[sid] >= 0.5), sid


@pytest.mark.parametrize("key,split", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_control_shows_each_row_the_text_the_shuffler_gives_it(world, runs, key, split):
    """Row by row: the control row of a sample showed the text engine.steps.evaluate's
    TextShuffler gives that sample over the local loader's batches (same tokens), on the
    sample's own image and box (same IoU as the local forward pass of that control batch).
    The random-weight fixture model barely reads text, so equal accuracies alone would not
    show this."""
    cfg = load_config(None, POOL)
    pred = runs[key]["pred"].filter(pc.field("split") == split)
    ids = pred.column("sample_id").to_pylist()
    text_of = dict(zip(ids, pred.column("text").to_pylist()))
    foreign = dict(zip(ids, pred.column("shuffled_text_from").to_pylist()))
    control_iou = dict(zip(ids, pred.column("shuffled_text_iou").to_pylist()))
    shuffler, seen = TextShuffler(evaluate.CONTROL_SEED), set()
    for batch in build_loader(cfg, world["data"][key], split, train=False, **world["options"][key]):
        control = shuffler(batch)
        if control is None:
            continue
        with torch.no_grad():
            iou = eval_iou(forward(world["model"], control), control["target"]).tolist()
        for k, sid in enumerate(control["sample_id"]):
            want = tokenize([prepare_text(text_of[foreign[sid]])], cfg.model.context_length).tokens[0]
            assert torch.equal(control["tokens"][k], want), sid
            assert control_iou[sid] == pytest.approx(iou[k], abs=1e-4), sid
            seen.add(sid)
    assert seen == {sid for sid, f in foreign.items() if f is not None}
    # flickr's first chunk holds one image only: its 4 rows have no foreign text, skipped
    skipped = runs[key]["metrics"]["splits"][split]["shuffled_text"]["skipped"]
    assert len(ids) - len(seen) == skipped == shuffler.skipped == (4 if key == "flickr" else 0)


def test_every_row_exactly_once_in_table_order(world, runs):
    for key, out in runs.items():
        pred, m = out["pred"], out["metrics"]
        samples = storage.read_table(f"{world['data'][key]}/samples", **world["options"][key])
        splits = list(world["rows"][key])
        want = [sid for s in splits for sid in
                samples.filter(pc.field("split") == s).column("sample_id").to_pylist()]
        assert pred.column("sample_id").to_pylist() == want, key
        assert pred.schema == evaluate.PREDICTIONS_SCHEMA
        assert m["overall"]["rows"] == len(want) == sum(world["rows"][key].values())
        for split in splits:
            s = m["splits"][split]
            assert s["rows"] == s["total"] + s["failed"] == world["rows"][key][split]


def test_unreadable_image_is_reported_by_id_and_counted(world, runs):
    """testB of unc: 1 readable sample, 2 on an image corrupted after import. They keep their rows
    (iou null, error naming the file), count in rows and failed, not in acc; acc equals the
    single-process evaluation of the readable row."""
    out = runs["unc"]
    s = out["metrics"]["splits"]["testB"]
    bad = out["pred"].filter(pc.field("image_id") == "bad.jpg")
    assert bad.num_rows == BAD_ROWS and bad.column("iou").null_count == BAD_ROWS
    assert bad.column("pred_box").null_count == bad.column("correct").null_count == BAD_ROWS
    assert all("bad.jpg" in e for e in bad.column("error").to_pylist())
    assert [f["sample_id"] for f in s["failed_samples"]] == bad.column("sample_id").to_pylist()
    assert s["failed"] == BAD_ROWS and s["rows"] == 3 and s["total"] == 1
    samples = storage.read_table(f"{world['data']['unc']}/samples")
    readable = samples.filter((pc.field("split") == "testB") & (pc.field("image_id") != "bad.jpg"))
    ref = local_evaluate(world, "unc", "testB", samples=readable, shuffled_text=False)
    assert s["acc"] == ref.accuracy and s["acc_failed_as_wrong"] == ref.meter.correct / 3
    assert "testB: 2 sample(s) could not be evaluated" in out["log"]
    overall = out["metrics"]["overall"]
    assert overall["rows"] == 15 and overall["failed"] == BAD_ROWS and overall["total"] == 13


def test_outputs_predictions_table_markdown_and_gallery(world, runs):
    out = runs["unc"]
    m, pred = out["metrics"], out["pred"]
    assert out["png"][:4] == b"\x89PNG" and m["gallery"].endswith("worst.png")
    assert m["model"] == {"image_size": 224, "context_length": 77}
    assert m["control"]["chunk"] == 4 and m["settings"]["box_int_truncation"] is True
    lines = out["md"].splitlines()
    assert "| split | samples | evaluated | failed | Acc@0.5 | shuffled text | unknown |" in lines
    val = m["splits"]["val"]
    assert f"| val | 7 | 7 | 0 | {100 * val['acc']:.2f} | {100 * val['shuffled_text']['acc']:.2f} |" \
           f" {100 * val['acc']:.2f} |" in lines
    assert any(line.startswith("| all | 15 | 13 | 2 |") for line in lines)
    ok = pred.filter(pc.is_valid(pred.column("iou")))
    for image_id, box in zip(ok.column("image_id").to_pylist(), ok.column("pred_box").to_pylist()):
        w, h = SIZES[image_id]
        assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h
    assert set(pred.column("expr_type").to_pylist()) == {"unknown"}
    shown = pred.filter(pc.is_valid(pred.column("shuffled_text_from")))
    image_of = dict(zip(pred.column("sample_id").to_pylist(), pred.column("image_id").to_pylist()))
    assert all(image_of[f] != i for f, i in zip(shown.column("shuffled_text_from").to_pylist(),
                                                shown.column("image_id").to_pylist()))
    assert "val: Acc@0.5" in out["log"] and "all: Acc@0.5" in out["log"]


def test_s3_inputs_and_outputs(world, runs, s3):
    """referit: checkpoint, dataset and results on S3 (moto), reached through --endpoint-url
    only, by the driver and the Ray Data workers alike (AWS_ENDPOINT_URL is the session's trap;
    planted: a worker that dropped the endpoint connected to it and ``no_default_endpoint``
    failed the fixture's test)."""
    out = runs["referit"]
    assert out["metrics"]["checkpoint"] == world["s3_model"]
    assert out["metrics"]["data"].startswith("s3://")
    assert out["metrics"]["gallery"] == f"{out['out']}/worst.png"
    assert not list(world["tmp"].glob("s3*")) and not list(world["tmp"].parent.glob("s3:*"))


def test_overwrite_replaces_earlier_results(runs):
    m = runs["flickr"]["metrics"]
    assert "stale" not in m and m["splits"]["test"]["rows"] == 9
    assert runs["flickr"]["png"][:4] == b"\x89PNG"


def parse(argv: list[str]):
    import argparse

    parser = argparse.ArgumentParser()
    evaluate_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_refuses_an_out_that_holds_results(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"acc": 0.9}')
    args = parse(["--checkpoint", world["model_dir"], "--data", world["data"]["flickr"],
                  "--splits", "test", "--out", str(out)])
    with pytest.raises(UserError, match=r"already holds evaluation results \(metrics.json\): pass "
                                        r"--overwrite"):
        evaluate_cli.run(args)
    assert json.loads((out / "metrics.json").read_text()) == {"acc": 0.9}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize("change,message", [
    ({"--checkpoint": "/nonexistent/model"}, r"--checkpoint /nonexistent/model: not a clipvg model folder"),
    ({"--checkpoint": "/x/best_checkpoint.pth"}, r"official checkpoint file; convert it first"),
    ({"--splits": "val,testC"}, r"split 'testC' has no samples in .*samples \(splits there: testA, testB, val\)"),
    ({"--splits": "val,val"}, r"give each split once"),
    ({"--data": "/nonexistent/data"}, r"--data /nonexistent/data: no manifest.json: it is not a clipvg dataset"),
])
def test_bad_input_is_one_user_error(world, tmp_path, change, message):
    argv = {"--checkpoint": world["model_dir"], "--data": world["data"]["unc"], "--splits": "val",
            "--out": str(tmp_path / "out"), **change}
    with pytest.raises(UserError, match=message) as err:
        evaluate_cli.run(parse([x for kv in argv.items() for x in kv]))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_checkpoint_may_be_a_run_folder_with_best(world, tmp_path):
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    for name in ("model.safetensors", "model_config.json"):
        (best / name).write_bytes((Path(world["model_dir"]) / name).read_bytes())
    folder, config = evaluate.resolve_checkpoint(str(tmp_path / "run"))
    assert folder == str(best) and config["image_size"] == 224
    (best / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"/run/best: model.safetensors is missing"):
        evaluate.resolve_checkpoint(str(tmp_path / "run"))


def test_foreign_texts_follow_the_shuffler_chunk_by_chunk():
    """Rows of one image get no foreign text; chunks carry the previous chunk's texts."""
    images = ["a", "a", "b", "b", "b", "c", "a"]
    picks = evaluate.foreign_texts(images, chunk=3)
    assert len(picks) == 7
    for i, j in enumerate(picks):
        assert j is not None and images[j] != images[i]
        assert j // 3 in (i // 3, i // 3 - 1)  # its own chunk or the previous one
    assert evaluate.foreign_texts(["a"] * 4, chunk=2) == [None] * 4


def test_weights_that_do_not_fit_the_config_are_one_line_before_ray(tmp_path, capsys, monkeypatch):
    """A model folder whose model_config.json says 2 fusion layers while its weights hold 1:
    one line naming the weights file, exit 2, checked on the driver before Ray starts (it used
    to end in ~300 lines, a traceback from every actor of the pool). Planted: without the
    driver-side check, init_ray is reached (and fails this test)."""
    from clipvg.config import ModelConfig
    from clipvg.distributed import evaluate_cli as cli_module
    from clipvg.model import build_model, export_model

    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    monkeypatch.setattr(cli_module, "init_ray", lambda *a, **k: pytest.fail("Ray started before the check"))
    cfg = ModelConfig(arch={"embed_dim": 32, "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32,
                                                            "layers": 2, "head_width": 16},
                            "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2,
                                         "layers": 2}},
                      image_size=64, context_length=24, taps=[0, 1])
    folder = export_model(build_model(cfg), tmp_path / "model")
    config = json.loads((folder / "model_config.json").read_text())
    config["fusion"]["layers"] = 2
    (folder / "model_config.json").write_text(json.dumps(config))
    rc = main(["evaluate", "--checkpoint", str(folder), "--data", str(tmp_path / "nowhere"), "--splits", "val",
               "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "model.safetensors does not fit" in err and str(folder) in err, err
    assert not (tmp_path / "eval").exists()
