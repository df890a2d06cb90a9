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
