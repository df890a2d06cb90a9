"""Pre-training scenes: cell ownership, phrase targets, and the never-see-the-demo rule."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clipvg.config import SynthConfig
from clipvg.sources.synthetic.scenes import SynthObject, generate_image, image_rng
from clipvg.sources.synthetic.text import COLOR_WORDS, RELATION_WORDS, SHAPE_WORDS, SIZE_WORDS
from clipvg.pretrain.scenes import PHRASES_PER_IMAGE, PRETRAIN_SPLIT, cell_owners, make_scene

CFG = SynthConfig(image_size=112, min_objects=3, max_objects=6)


def _obj(index: int, box, shape="circle", color="red", size="medium") -> SynthObject:
    return SynthObject(index, shape, color, size, (200, 0, 0), tuple(float(v) for v in box))


def test_cell_owners_by_hand():
    # 112 px, 16 px cells: a 7 x 7 grid, raster order (row * 7 + column).
    big = _obj(0, (0, 0, 32, 32))  # exactly cells (0,0), (0,1), (1,0), (1,1)
    tiny = _obj(1, (52, 52, 58, 58))  # inside cell row 3, column 3
    sliver = _obj(2, (96, 0, 112, 4))  # covers 25% of cell (0, 6): below MIN_COVER of the cell,
    # but it is the whole object, so it owns the cell by its own-area cover (100%)
    owner = cell_owners([big, tiny, sliver], 112, 16)
    expected = np.full(49, -1)
    expected[[0, 1, 7, 8]] = 0
    expected[24] = 1
    expected[6] = 2
    np.testing.assert_array_equal(owner, expected)


def test_cell_owners_small_overlaps_stay_background():
    # A 40 x 40 object from (20, 20): cell (1,1) = px 16..31 is covered 12 x 12 = 56%;
    # cell (0,0) = px 0..15 not at all; cell (3,3) = px 48..63 only 12 x 12 = 56% too;
    # cell (1,3) = px x 48..63, y 16..31: 12 x 12; row 0 nothing.
    owner = cell_owners([_obj(0, (20, 20, 60, 60))], 112, 16).reshape(7, 7)
    assert owner[0].tolist() == [-1] * 7
    assert owner[1:4, 1:4].tolist() == [[0] * 3] * 3
    assert owner[4:].max() == -1 and owner[:, 4:].max() == -1


def test_tiny_object_owns_its_centre_cell_even_when_split():
    # 10 x 10 object centred on the corner of four cells: each share is 25% of the object.
    owner = cell_owners([_obj(0, (27, 27, 37, 37))], 112, 16)
    assert (owner == 0).sum() == 1 and owner[2 * 7 + 2] == 0  # centre (32, 32) is in cell (2, 2)


def test_make_scene_is_pure_and_seeded():
    a, b = make_scene(5, 3, CFG, 16), make_scene(5, 3, CFG, 16)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.phrases == b.phrases and a.caption == b.caption
    assert not np.array_equal(a.pixels, make_scene(5, 4, CFG, 16).pixels)


def _words_of(phrase: str) -> dict:
    """An independent reading of a phrase: which attribute values its words name."""
    found = {}
    for attr, table in (("size", SIZE_WORDS), ("color", COLOR_WORDS), ("shape", SHAPE_WORDS)):
        for value, words in table.items():
            if any(re.search(rf"\b{re.escape(w)}\b", phrase) for w in words):
                found[attr] = value
    return found


@pytest.mark.parametrize("index", range(40))
def test_phrase_targets_are_cells_of_matching_objects(index):
    scene = make_scene(11, index, CFG, 16)
    assert len(scene.phrases) == PHRASES_PER_IMAGE
    for phrase, target in zip(scene.phrases, scene.phrase_targets):
        if not phrase:
            assert not target.any()
            continue
        named = _words_of(phrase)
        assert named, phrase
        owners = set(scene.cell_object[target].tolist())
        for k in owners:  # every target cell belongs to an object with the named attributes
            assert all(getattr(scene.objects[k], a) == v for a, v in named.items()), phrase
        # ... and every object with those attributes (and region, when named) has its cells in
        if not re.search(r"\b(left|right|top|bottom|center)\b", phrase):
            for k, o in enumerate(scene.objects):
                if all(getattr(o, a) == v for a, v in named.items()):
                    assert k in owners, (phrase, k)


def test_negative_phrases_match_nothing():
    for index in range(30):
        scene = make_scene(2, index, CFG, 16)
        positives = sum(1 for p, t in zip(scene.phrases, scene.phrase_targets) if p and t.any())
        assert positives == min(len(scene.objects), PHRASES_PER_IMAGE - 2)


def test_cell_classes_agree_with_owners():
    scene = make_scene(3, 0, CFG, 16)
    fg = scene.cell_object >= 0
    for cell in np.flatnonzero(fg):
        o = scene.objects[scene.cell_object[cell]]
        x0, y0, x1, y1 = (v / 112 for v in o.box)
        np.testing.assert_allclose(scene.cell_box[cell], [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                                   atol=1e-6)
    assert (scene.cell_color[~fg] == 7).all() and (scene.cell_shape[~fg] == 6).all()


def test_texts_are_captions_not_referring_expressions():
    """Pre-training text never relates one object to another and never uses the definite article
    of a referring expression; relation words of the world's expressions do not occur."""
    relation_words = {w for forms in RELATION_WORDS.values() for w in forms}
    for index in range(100):
        scene = make_scene(7, index, CFG, 16)
        for text in [scene.caption, *scene.phrases]:
            assert not re.search(r"\bthe (?!(top|bottom|left|right|center|middle)\b)", text), text
            assert not any(re.search(rf"\b{w}\b", text) for w in relation_words), text
            assert not re.search(r"\b(leftmost|rightmost|topmost|highest|lowest)\b", text), text


def test_pretraining_images_are_not_world_images():
    assert PRETRAIN_SPLIT not in ("train", "val", "test")
    world = np.asarray(generate_image(image_rng(0, "train", 0), CFG).image)
    assert not np.array_equal(make_scene(0, 0, CFG, 16).pixels, world)
