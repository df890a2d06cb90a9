"""``clipvg predict``: ground one expression in one image with a trained checkpoint.

Prints the box in pixels of the original image (``x0 y0 x1 y1``) and optionally draws it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from clipvg.config import ModelConfig


@torch.no_grad()
def predict_box(model: torch.nn.Module, model_cfg: ModelConfig, image: Image.Image, text: str,
                normalize: str = "imagenet", overflow: str = "truncate") -> list[float]:
    """The predicted ``(x0, y0, x1, y1)`` in pixels of ``image`` for expression ``text``.

    Uses the evaluation preprocessing (long side to the canvas, centred padding); the canvas box
    is clamped to the canvas, as in evaluation, then mapped back through the letterbox.
    """
    from clipvg.data.text import prepare_text, tokenize
    from clipvg.data.transforms import canvas_to_image_box, eval_transform

    size = model_cfg.image_size
    text = prepare_text(text)
    # the target box is irrelevant for prediction: pass the whole image
    sample = eval_transform(image, (0, 0, image.width, image.height), text, size=size, normalize=normalize)
    tok = tokenize([text], context_length=model_cfg.context_length, overflow=overflow)
    model.eval()
    pred = model(sample.image[None], sample.pixel_mask[None], tok.tokens, tok.token_mask)[0]
    box = canvas_to_image_box(pred, sample.scale, sample.offset, size)
    box = [min(max(float(v), 0.0), float(lim)) for v, lim in zip(box, (image.width, image.height) * 2)]
    return box


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="folder with model.safetensors + model_config.json")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--text", required=True, help="referring expression")
    parser.add_argument("--out", help="write the image with the predicted box drawn (PNG/JPEG)")
    parser.add_argument("--json", action="store_true", help="print the box as JSON")


def run(args) -> int:
    from clipvg.model import load_model
    from clipvg.viz import draw_boxes

    try:
        image = Image.open(args.image)
        image.load()
    except (OSError, UnidentifiedImageError) as err:
        print(f"clipvg predict: cannot read image {args.image}: {err}", file=sys.stderr)
        return 2
    if not Path(args.checkpoint).is_dir():
        print(f"clipvg predict: checkpoint folder {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    model = load_model(args.checkpoint)
    box = predict_box(model, model.config, image, args.text)
    if args.json:
        print(json.dumps({"box_xyxy": [round(v, 2) for v in box], "text": args.text, "image": args.image}))
    else:
        print(" ".join(f"{v:.1f}" for v in box))
    if args.out:
        draw_boxes(image, box).save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
