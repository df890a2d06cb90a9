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
