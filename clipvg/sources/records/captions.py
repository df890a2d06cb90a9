"""Captions -> the ``captions`` table (``clipvg records --format captions-jsonl``).

Input: one JSON object per line (``.jsonl``; a ``.json`` list of the same objects is read too)::

    {"image": "COCO_train2014_000000000839.jpg", "caption": "a man riding a horse", "score": 0.61}

``image`` is the image's file name (``image_file`` / ``file_name`` are accepted; a path is
matched by its base name), ``caption`` the sentence, ``score`` (optional) the captioner's
confidence in [0, 1] (e.g. exp of the beam's mean token log-probability). A line may instead
hold ``"captions": [...]`` (and optionally ``"scores": [...]``, as long): one row per caption.

That second form is the layout of CLIP-VG's captioner output (``linhuixiao/CLIP-VG``
``pseudo_label_generation_module/pseudo_caption_label_generation/
clip_prefix_captioning_for_dataset.py`` saves ``[{"image_id": index, "image_file": path,
"captions": [text]}, ...]`` with ``torch.save``; ClipCap, ``rmokady/CLIP_prefix_caption``,
keeps no score), so that ``.pth`` file is read as it is (restricted unpickling, no torch).

Rows: ``caption_id`` = ``{image_id}#c{k}`` (k = 0, 1, ... per image in file order), ``caption`` =
the text with surrounding white space removed, ``score`` = the given score, or **1.0** when the
file has none (the caption generator does not read it; the manifest's ``records`` entry says
how many scores were missing).
"""

from __future__ import annotations

from typing import Any, Iterable

from clipvg.data.schema import CAPTIONS_SCHEMA
from clipvg.sources.records.common import (
    Collected, Images, RecordsError, image_name, probability,
)

NO_SCORE = 1.0


def _texts(record: dict, uri: str, where: str) -> list[tuple[str, Any]]:
    """``(caption, score or None)`` pairs of one record."""
    if ("caption" in record) == ("captions" in record):
        raise RecordsError(f"{uri}: {where}: needs exactly one of 'caption' (a string) or "
                           "'captions' (a list of strings)")
    if "caption" in record:
        if "scores" in record:
            raise RecordsError(f"{uri}: {where}: 'scores' goes with 'captions'; use 'score'")
        return [(record["caption"], record.get("score"))]
    texts = record["captions"]
    if not isinstance(texts, list):
        raise RecordsError(f"{uri}: {where}: 'captions' must be a list of strings")
    scores = record.get("scores")
    if "score" in record:
        raise RecordsError(f"{uri}: {where}: 'score' goes with 'caption'; use 'scores'")
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(texts)):
        raise RecordsError(f"{uri}: {where}: 'scores' must be a list as long as 'captions'")
    return list(zip(texts, scores if scores is not None else [None] * len(texts)))


def convert(records: Iterable[tuple[str, Any]], images: Images, *, uri: str,
            out: Collected | None = None) -> Collected:
    """Rows of the captions table from ``(where, record)`` pairs of a captions file."""
    out = Collected(CAPTIONS_SCHEMA) if out is None else out
    missing = 0
    for where, record in records:
        if not isinstance(record, dict):
            raise RecordsError(f"{uri}: {where}: expected an object, got {type(record).__name__}")
        name = image_name(record, uri, where)
        pairs = _texts(record, uri, where)
        out.records += len(pairs)
        checked = []
        for j, (text, score) in enumerate(pairs):
            at = where if len(pairs) == 1 and "caption" in record else f"{where} caption {j}"
            if not isinstance(text, str) or not text.strip():
                raise RecordsError(f"{uri}: {at}: the caption must be a non-empty string, got "
                                   f"{text!r:.60}")
            checked.append((text.strip(), None if score is None else
                            probability(score, uri, f"{at} score")))
        image_id = images.resolve(name)
        if image_id is None:
            out.drop(name, len(pairs))
            continue
        for text, score in checked:
            if score is None:
                missing += 1
                score = NO_SCORE
            out.add(dict(image_id=image_id,
                                 caption_id=f"{image_id}#c{out.next_index(image_id)}",
                                 caption=text, score=score))
    if missing:
        out.notes.append(f"{uri}: {missing} caption(s) without a score were given score "
                         f"{NO_SCORE}")
    return out
