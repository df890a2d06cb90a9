"""``clipvg predict``: ground one expression in one image with a trained checkpoint.

Prints the box in pixels of the original image (``x0 y0 x1 y1``) and optionally draws it.
``--checkpoint`` (a model folder or a run folder with ``best/``) and ``--image`` may be local
paths or storage URIs (``s3://...``, reached at ``--endpoint-url`` when given); ``--out`` is a
local file.

A text longer than the checkpoint's context is cut to what fits, as training and evaluation
cut it (``data.text_overflow=truncate``, the default), and a warning on stderr says how many BPE
tokens were dropped: the answer is then about the kept prefix, which the user has to know.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from clipvg.config import ModelConfig
from clipvg.data import storage
from clipvg.data.text import EmptyTextError, TextTooLongError, bpe_ids, prepare_text, tokenize
from clipvg.data.transforms import canvas_to_image_box, eval_transform
from clipvg.errors import UserError
from clipvg.model import load_model
from clipvg.model.io import load_model_at


@dataclass(frozen=True)
class Prediction:
    """A predicted box and what happened to the text on the way in."""

    box: list[float]  # x0, y0, x1, y1 in pixels of the image
    text_tokens: int  # BPE tokens of the (templated) text
    dropped_tokens: int  # of those, how many did not fit the context and were cut


@torch.no_grad()
def predict(model: torch.nn.Module, model_cfg: ModelConfig, image: Image.Image, text: str,
            normalize: str = "imagenet", overflow: str = "truncate") -> Prediction:
    """The predicted box in pixels of ``image`` for expression ``text``, and the token counts.

    Uses the evaluation preprocessing (long side to the canvas, centred padding); the canvas box
    is clamped to the canvas, as in evaluation, then mapped back through the letterbox. A text
    with no BPE token raises :class:`~clipvg.errors.UserError`.
    """
    size = model_cfg.image_size
    text = prepare_text(text)
    try:
        tok = tokenize([text], context_length=model_cfg.context_length, overflow=overflow)
    except EmptyTextError:
        raise UserError(f"the text {text!r} is empty: it has no BPE token") from None
    except TextTooLongError as e:
        raise UserError(str(e)) from None
    n_tokens = len(bpe_ids(text))
    # the target box is irrelevant for prediction: pass the whole image
    sample = eval_transform(image, (0, 0, image.width, image.height), text, size=size, normalize=normalize)
    model.eval()
    pred = model(sample.image[None], sample.pixel_mask[None], tok.tokens, tok.token_mask)[0]
    box = canvas_to_image_box(pred, sample.scale, sample.offset, size)
    box = [min(max(float(v), 0.0), float(lim)) for v, lim in zip(box, (image.width, image.height) * 2)]
    return Prediction(box, n_tokens, tok.dropped)


def predict_box(model: torch.nn.Module, model_cfg: ModelConfig, image: Image.Image, text: str,
                normalize: str = "imagenet", overflow: str = "truncate") -> list[float]:
    """The predicted ``(x0, y0, x1, y1)`` in pixels of ``image`` for expression ``text``
    (:func:`predict`'s box)."""
    return predict(model, model_cfg, image, text, normalize, overflow).box


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="model folder (model.safetensors + model_config.json) or run folder "
                             "(its best/); a local path or a storage URI")
    parser.add_argument("--image", required=True, help="image file (a local path or a storage URI)")
    parser.add_argument("--text", required=True, help="referring expression")
    parser.add_argument("--out", help="write the image with the predicted box drawn (PNG/JPEG)")
    parser.add_argument("--json", action="store_true", help="print the box as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--endpoint-url",
                        help="S3-compatible endpoint for s3:// URIs (default: AWS_ENDPOINT_URL, else AWS)")


def check_out_path(out: str, overwrite: bool = False) -> None:
    """``--out`` must name an image format PIL can write, in a folder that exists, and no file
    that is there already (the input image, say) unless ``overwrite`` (checked before any work)."""
    Image.init()
    ext = Path(out).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"--out {out}: cannot write images with extension {ext or '(none)'!r}; "
                        "use .png or .jpg")
    if not Path(out).parent.is_dir():
        raise UserError(f"--out {out}: folder {Path(out).parent} does not exist")
    storage.refuse_existing(out, overwrite=overwrite)


def read_image(image: str, **storage_options) -> Image.Image:
    """The image at a local path or storage URI, decoded (a corrupt file: one-line UserError)."""
    try:
        if storage.is_uri(image):
            storage.check_access(image, **storage_options)
            source = io.BytesIO(storage.read_bytes(image, **storage_options))
        else:
            source = image
        loaded = Image.open(source)
        loaded.load()
    except FileNotFoundError:
        raise UserError(f"cannot read image {image}: no such file") from None
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {image}: {err}") from None
    return loaded


def load_checkpoint(checkpoint: str, **storage_options):
    """The model of ``checkpoint``: a model folder or a run folder (its ``best/``), local or on
    storage."""
    if not storage.is_uri(checkpoint):
        folder = Path(checkpoint)
        if not folder.is_dir():
            raise UserError(f"checkpoint folder {checkpoint} does not exist")
        if not (folder / "model_config.json").exists() and (folder / "best").is_dir():
            folder = folder / "best"  # a run folder
        return load_model(folder)
    # deferred: loads pyarrow; paid only for a checkpoint on storage
    from clipvg.distributed.evaluate import resolve_checkpoint

    storage.check_access(checkpoint, **storage_options)
    folder, _ = resolve_checkpoint(checkpoint, **storage_options)
    return load_model_at(folder, **storage_options)


def run(args) -> int:
    if not args.text.strip():
        raise UserError("--text is empty: give the expression to ground")
    if args.out:
        check_out_path(args.out, args.overwrite)
    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    image = read_image(args.image, **options)
    model = load_checkpoint(args.checkpoint, **options)
    # deferred: loads matplotlib; paid only when this runs, not on import
    from clipvg.viz import draw_boxes

    result = predict(model, model.config, image, args.text)
    box = result.box
    if result.dropped_tokens:
        room = model.config.context_length - 2
        print(f"clipvg predict: warning: the text has {result.text_tokens} BPE tokens, the "
              f"checkpoint's context holds {room}: the last {result.dropped_tokens} were dropped "
              "(the box is for the first part of the text)", file=sys.stderr)
    if args.json:
        print(json.dumps({"box_xyxy": [round(v, 2) for v in box], "text": args.text, "image": args.image,
                          "dropped_tokens": result.dropped_tokens}))
    else:
        print(" ".join(f"{v:.1f}" for v in box))
    if args.out:
        draw_boxes(image, box).save(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
