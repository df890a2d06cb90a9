"""Pseudo-caption labels (method doc §8): a whole caption paired with the box of the detected
object its head noun names.

The official pipeline parses captions with spaCy and lemmatises with WordNet; neither is
available offline, so :func:`head_noun` is a small rule-based stand-in (swap it through the
``head_noun`` argument / option for a real parser):

1. lowercase, split into words (letters, inner hyphens);
2. drop one leading *framing* phrase (:data:`FRAMING`: "a picture of", "there is", ...), which a
   dependency parse would make the root ("picture") although the caption is about what follows;
3. skip leading determiners and numerals (:data:`DETERMINERS`);
4. the first noun phrase runs until a break word (:data:`BREAK_WORDS`: prepositions,
   conjunctions, verbs such as "is" / "sits"), a word followed by a determiner once the phrase
   has begun (a verb: "a man riding a horse" -> "man"), or the end; its **last** word is the
   head noun ("a small red circle next to ..." -> "circle");
5. :func:`lemma` singularises it ("circles" -> "circle", "boxes" -> "box", "crosses" ->
   "cross", "berries" -> "berry", irregulars such as "people" -> "person").

Pairing: the lemma is compared with the ``label`` of the image's detections after the
template source's filtering (tiny boxes and duplicates dropped); the most confident matching
detection gives the box (x0, y0, x1, y1 pixels). A caption whose lemma matches no detection
gives nothing. At most ``max_per_image`` pairs per image, a random subset drawn from the
per-image stream.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

from clipvg.pseudo.common import (
    DUPLICATE_IOU, MIN_AREA_FRAC, filter_detections, image_rng, random_subset, sample_row,
)

SOURCE = "caption"
DEFAULTS = dict(max_per_image=6, min_area_frac=MIN_AREA_FRAC, dup_iou=DUPLICATE_IOU,
                head_noun=None)

FRAMING = (
    "a picture of", "a photo of", "a photograph of", "an image of", "a drawing of",
    "a close up of", "a view of", "there is", "there are", "this is", "it is",
)
DETERMINERS = frozenset(
    "a an the this that these those some any one two three four five several many its their "
    "his her our my".split()
)
BREAK_WORDS = frozenset(
    "of on in at next near to with beside besides above below under over behind by and or "
    "is are sits sitting stands standing lies lying between among from that which while "
    "against inside outside around across along into onto".split()
)
IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child",
             "mice": "mouse", "geese": "goose", "feet": "foot", "teeth": "tooth",
             "leaves": "leaf", "knives": "knife", "wolves": "wolf", "shelves": "shelf"}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def lemma(word: str) -> str:
    """A tiny English singulariser for nouns (not a full lemmatiser: "buses" -> "buse")."""
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def head_noun(caption: str) -> str | None:
    """The head noun (as written) of the caption's first noun phrase; None if there is none."""
    words = _WORD.findall(caption.lower())
    text = " ".join(words)
    for frame in FRAMING:
        if text == frame or text.startswith(frame + " "):
            words = words[len(frame.split()):]
            break
    while words and words[0] in DETERMINERS:
        words = words[1:]
    phrase: list[str] = []
    for w, nxt in zip(words, words[1:] + [""]):
        if w in BREAK_WORDS or (phrase and nxt in DETERMINERS):
            break  # a preposition / conjunction, or a verb ("riding" in "man riding a horse")
        phrase.append(w)
    return phrase[-1] if phrase else None


_default_head_noun = head_noun  # the parameter of caption_samples shadows the name


def caption_samples(
    image_id: str, width: float, height: float, captions: Iterable[dict],
    detections: Iterable[dict], *, seed: int, split: str = "train", dataset: str,
    max_per_image: int = 6, min_area_frac: float = MIN_AREA_FRAC,
    dup_iou: float = DUPLICATE_IOU, head_noun: Callable[[str], str | None] | None = None,
) -> list[dict]:
    """Caption pseudo-labels of one image (samples rows, ``source`` = "caption").

    ``captions``: dicts with ``caption_id`` and ``caption``; ``detections`` as for the
    template source. ``head_noun``: caption -> head noun (default: this module's rules).
    """
    extract = head_noun or _default_head_noun
    kept = filter_detections(detections, width, height, min_area_frac=min_area_frac,
                             dup_iou=dup_iou)
    pairs = []
    for c in sorted(captions, key=lambda c: c["caption_id"]):
        noun = extract(c["caption"])
        if noun is None:
            continue
        match = next((d for d in kept if d["label"] == lemma(noun)), None)  # most confident
        if match is not None:
            pairs.append((c["caption"], match["box"]))
    chosen = random_subset(image_rng(seed, image_id), pairs, max_per_image)
    return [sample_row(SOURCE, image_id, k, text, box, split=split, dataset=dataset)
            for k, (text, box) in enumerate(chosen)]

