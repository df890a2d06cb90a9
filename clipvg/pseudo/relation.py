"""Pseudo-relation labels (method doc §8) from one image's scene-graph triplets.

Rules: keep a triplet when its subject, predicate and object scores are **all** > ``min_score``
(0.2, strict); rank the kept ones by the product of the three scores (ties by ``triplet_id``)
and take the ``top_k`` (10) best; each becomes the expression "subject predicate object"
grounded to the **subject** box (x0, y0, x1, y1 pixels, as stored). No randomness: the output
depends on the image's triplets only, not on their order.
"""

from __future__ import annotations

from typing import Iterable

from clipvg.pseudo.common import sample_row

SOURCE = "relation"
DEFAULTS = dict(min_score=0.2, top_k=10)


def _product(t: dict) -> float:
    return t["subject_score"] * t["predicate_score"] * t["object_score"]


def select_triplets(triplets: Iterable[dict], *, min_score: float = 0.2,
                    top_k: int = 10) -> list[dict]:
    """The triplets that become labels, best product first."""
    kept = [t for t in triplets
            if min(t["subject_score"], t["predicate_score"], t["object_score"]) > min_score]
    kept.sort(key=lambda t: (-_product(t), t["triplet_id"]))
    return kept[:top_k]


def relation_text(t: dict) -> str:
    """ "subject predicate object", class names with underscores read as spaces."""
    return " ".join(str(t[k]).replace("_", " ") for k in ("subject", "predicate", "object"))


def relation_samples(
    image_id: str, triplets: Iterable[dict], *, split: str = "train", dataset: str,
    min_score: float = 0.2, top_k: int = 10,
) -> list[dict]:
    """Relation pseudo-labels of one image (samples rows, ``source`` = "relation").

    ``triplets``: dicts with ``triplet_id``, ``subject``, ``subject_box``, ``predicate``,
    ``object``, ``subject_score``, ``predicate_score``, ``object_score``.
    """
    return [sample_row(SOURCE, image_id, k, relation_text(t), t["subject_box"], split=split,
                       dataset=dataset)
            for k, t in enumerate(select_triplets(triplets, min_score=min_score, top_k=top_k))]
