"""clipvg predict: geometry back to image pixels, and the CLI end to end."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from clipvg.config import ModelConfig
from clipvg.data.transforms import eval_transform
from clipvg.model import build_model, export_model
from clipvg.predict import predict_box


class FixedBoxModel(torch.nn.Module):
    """Always predicts the same canvas box (cx, cy, w, h)."""

    def __init__(self, box):
        super().__init__()
        self.box = torch.as_tensor(box, dtype=torch.float32)

    def forward(self, image, pixel_mask, tokens, token_mask):
        return self.box.expand(image.shape[0], 4)


@pytest.mark.parametrize("size", [(320, 240), (180, 300), (224, 224)])
def test_predicted_canvas_box_maps_back_to_image_pixels(size):
    image = Image.new("RGB", size)
    true_box = (40.0, 30.0, 150.0, 120.0)
    canvas_box = eval_transform(image, true_box, "x").box  # where the eval transform puts it
    box = predict_box(FixedBoxModel(canvas_box), ModelConfig(), image, "the thing")
    assert box == pytest.approx(true_box, abs=1e-3)


def test_predict_cli_prints_box_and_draws(tmp_path, make_tiny_model_folder):
    folder = make_tiny_model_folder(tmp_path)
    Image.new("RGB", (120, 90), (200, 180, 160)).save(tmp_path / "img.png")
    out = tmp_path / "pred.png"
    proc = subprocess.run(
        [sys.executable, "-m", "clipvg.cli", "predict", "--checkpoint", str(folder),
         "--image", str(tmp_path / "img.png"), "--text", "the red circle", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    x0, y0, x1, y1 = map(float, proc.stdout.split())
    assert 0 <= x0 <= x1 <= 120 and 0 <= y0 <= y1 <= 90
    assert Image.open(out).size == (120, 90)


def test_predict_cli_rejects_a_corrupt_image(tmp_path, make_tiny_model_folder):
    folder = make_tiny_model_folder(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    proc = subprocess.run(
        [sys.executable, "-m", "clipvg.cli", "predict", "--checkpoint", str(folder),
         "--image", str(tmp_path / "bad.png"), "--text", "x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad.png" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def make_tiny_model_folder():
    def make(tmp_path):
        cfg = ModelConfig(
            arch={"embed_dim": 32, "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2,
                                                   "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
            image_size=64, taps=[0, 1])
        return export_model(build_model(cfg), tmp_path / "model")
    return make


# ------------------------------------------------------------------------------ bad input: one line, exit 2
@pytest.fixture
def predict_setup(tmp_path, make_tiny_model_folder, monkeypatch):
    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    folder = make_tiny_model_folder(tmp_path)
    Image.new("RGB", (120, 90), (200, 180, 160)).save(tmp_path / "img.png")

    def run(*extra, checkpoint=folder):
        from clipvg.cli import main

        return main(["predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "img.png"), *extra])
    return run, folder


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("text", ["", "   "])
def test_predict_empty_text(predict_setup, capsys, text):
    run, _ = predict_setup
    assert run("--text", text) == 2
    assert "--text is empty" in one_line(capsys.readouterr().err)


def test_predict_unsupported_out_extension_fails_before_any_work(predict_setup, capsys, tmp_path):
    run, _ = predict_setup
    assert run("--text", "the thing", "--out", str(tmp_path / "x.xyz")) == 2
    captured = capsys.readouterr()
    assert "'.xyz'" in one_line(captured.err) and captured.out == ""  # no box printed first


def test_predict_truncated_weights_file(predict_setup, capsys, tmp_path):
    run, folder = predict_setup
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    assert run("--text", "x") == 2
    line = one_line(capsys.readouterr().err)
    assert str(weights) in line and "truncated" in line


def test_predict_never_unpickles_a_pickle_saved_as_safetensors(predict_setup, capsys, tmp_path):
    import os
    import pickle

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    run, folder = predict_setup
    for save in (lambda p: p.write_bytes(pickle.dumps(Payload())), lambda p: torch.save(Payload(), p)):
        save(folder / "model.safetensors")
        assert run("--text", "x") == 2
        line = one_line(capsys.readouterr().err)
        assert "model.safetensors" in line and "pickle" in line
        assert not marker.exists()


def test_predict_says_how_many_tokens_a_long_text_lost(predict_setup, capsys):
    run, folder = predict_setup
    assert run("--text", " ".join(["red"] * 100), "--json") == 0  # context 77: 75 BPE tokens fit
    captured = capsys.readouterr()
    warning = one_line(captured.err)
    assert "100 BPE tokens" in warning and "the last 25 were dropped" in warning
    import json

    assert json.loads(captured.out)["dropped_tokens"] == 25
    assert run("--text", "the red circle") == 0
    assert capsys.readouterr().err == ""  # nothing to say when the text fits


# ------------------------------------------------------------------------------ storage URIs, --out
def test_predict_reads_checkpoint_and_image_from_s3(predict_setup, s3, tmp_path, capsys):
    """The run folder and the image on S3, the endpoint given by --endpoint-url only
    (``AWS_ENDPOINT_URL`` is the session's trap, checked by ``no_default_endpoint``): the same
    box as from the local files. Fails if predict drops the endpoint (planted: the trap counts
    the connection and the test fails) or reads another checkpoint than the run's best/."""
    from clipvg.data import storage

    run, folder = predict_setup
    assert run("--text", "the red circle") == 0
    local_box = capsys.readouterr().out.split()
    runs = s3.uri("predict-run")
    storage.upload_folder(folder, f"{runs}/best", **s3.options)
    storage.write_bytes((tmp_path / "img.png").read_bytes(), f"{runs}/img.png", **s3.options)
    from clipvg.cli import main

    rc = main(["predict", "--checkpoint", runs, "--image", f"{runs}/img.png", "--text", "the red circle",
               "--endpoint-url", s3.endpoint_url])
    assert rc == 0
    assert capsys.readouterr().out.split() == local_box


def test_predict_names_an_unreachable_endpoint_in_one_line(predict_setup, s3, capsys):
    """A wrong --endpoint-url (a closed loopback port): exit 2 and one line naming that
    endpoint, nothing sent anywhere else (the session trap stays silent)."""
    from clipvg.cli import main
    from s3_server import free_port

    wrong = f"http://127.0.0.1:{free_port()}"
    rc = main(["predict", "--checkpoint", s3.uri("nothing"), "--image", f"{s3.uri('nothing')}/img.png",
               "--text", "x", "--endpoint-url", wrong])
    assert rc == 2
    assert f"cannot reach the S3 endpoint {wrong}" in one_line(capsys.readouterr().err)


def test_predict_refuses_to_overwrite_an_existing_out(predict_setup, capsys, tmp_path):
    """--out naming an existing file (here the input image itself) is refused before any work
    and the file is unchanged; --overwrite replaces it."""
    run, _ = predict_setup
    image = tmp_path / "img.png"
    before = image.read_bytes()
    assert run("--text", "the red circle", "--out", str(image)) == 2
    assert "--overwrite" in one_line(capsys.readouterr().err)
    assert image.read_bytes() == before
    assert run("--text", "the red circle", "--out", str(image), "--overwrite") == 0
    assert image.read_bytes() != before
