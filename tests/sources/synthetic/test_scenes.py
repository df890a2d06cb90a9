"""The synthetic world: determinism, expressions checked by an independent parser, pixels
matching boxes, detector noise rates, the writer and the CLI."""

import collections
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipvg.config import SynthConfig
from clipvg.data import storage
from clipvg.sources.synthetic import scenes as syn
from clipvg.data.schema import validate_table
from clipvg.sources.synthetic.text import RELATION_MARGIN, SPATIAL_MARGIN

# ---------------------------------------------------------------------------------------------
# An independent reading of the expressions (own lexicon, own semantics; see the module
# docstring of clipvg.sources.synthetic.text for the meaning this encodes).
# ---------------------------------------------------------------------------------------------

SHAPE = {"circle": "circle", "ball": "circle", "disc": "circle", "dot": "circle",
         "square": "square", "box": "square", "block": "square", "triangle": "triangle",
         "star": "star", "cross": "cross", "plus": "cross", "diamond": "diamond",
         "rhombus": "diamond"}
COLOR = {c: c for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink")}
COLOR["violet"] = "purple"
SIZE = {"small": "small", "little": "small", "tiny": "small", "medium": "medium",
        "mid": "medium", "large": "large", "big": "large"}
WHERE = {"leftmost": "left", "left": "left", "rightmost": "right", "right": "right",
         "topmost": "top", "highest": "top", "top": "top", "upper": "top",
         "bottommost": "bottom", "lowest": "bottom", "bottom": "bottom", "lower": "bottom",
         "middle": "middle", "between": "middle"}
FILLER = {"the", "one", "object", "shape", "sign", "sized", "that", "is", "on", "far",
          "furthest", "to", "at", "very", "in", "other", "two"}
RELATION = re.compile(r"\b(?:to the )?(left of|right of|above|over|below|under|beneath)\b")
REL_DIR = {"left of": "left", "right of": "right", "above": "above", "over": "above",
           "below": "below", "under": "below", "beneath": "below"}


def words_to_desc(words):
    desc = {}
    for w in words:
        for attr, lex in (("shape", SHAPE), ("color", COLOR), ("size", SIZE)):
            if w in lex:
                assert attr not in desc, f"two {attr} words in {words}"
                desc[attr] = lex[w]
                break
        else:
            assert w in FILLER, f"unknown word {w!r}"
    return desc


def matching(objs, desc):
    return [o for o in objs if all(getattr(o, a) == v for a, v in desc.items())]


def centre(o):
    return (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2


def referent(text, objs, size):
    """The one object ``text`` names, per the documented semantics; AssertionError if the
    expression is ambiguous, names nothing, or uses unknown words."""
    rel = RELATION.search(text)
    if rel:  # relational: "<target words> <relation> <reference words>"
        r_objs = matching(objs, words_to_desc(re.findall(r"[a-z]+", text[rel.end():])))
        assert len(r_objs) == 1, f"reference of {text!r} is not unique"
        ref = r_objs[0]
        cands = [o for o in matching(objs, words_to_desc(re.findall(r"[a-z]+", text[:rel.start()])))
                 if o is not ref]
        assert len(cands) >= 2, f"relation not needed in {text!r}"
        d = REL_DIR[rel.group(1)]

        def beyond(o):
            (ox, oy), (rx, ry) = centre(o), centre(ref)
            return {"left": rx - ox, "right": ox - rx, "above": ry - oy, "below": oy - ry}[d]

        hits = [o for o in cands if beyond(o) >= RELATION_MARGIN * size]
        assert len(hits) == 1, f"{len(hits)} objects satisfy {text!r}"
        assert all(beyond(o) <= 0 for o in cands if o is not hits[0]), f"borderline: {text!r}"
        return hits[0]
    words = re.findall(r"[a-z]+", text)
    where = {WHERE[w] for w in words if w in WHERE}
    group = matching(objs, words_to_desc([w for w in words if w not in WHERE]))
    if not where:  # attribute
        assert len(group) == 1, f"{len(group)} objects match {text!r}"
        return group[0]
    (where,) = where
    assert len(group) >= 2, f"spatial word not needed in {text!r}"
    axis = 1 if where in ("top", "bottom") else 0
    order = sorted(group, key=lambda o: centre(o)[axis])
    c = [centre(o)[axis] for o in order]
    margin = SPATIAL_MARGIN * size
    if where == "middle":
        assert len(group) == 3 and min(c[1] - c[0], c[2] - c[1]) >= margin, text
        return order[1]
    if where in ("left", "top"):
        assert c[1] - c[0] >= margin, f"runner-up too close in {text!r}"
        return order[0]
    assert c[-1] - c[-2] >= margin, f"runner-up too close in {text!r}"
    return order[-1]


def world(n, seed=0, split="train", cfg=None):
    cfg = cfg or SynthConfig()
    return [syn.generate_image(syn.image_rng(seed, split, i), cfg) for i in range(n)]


@pytest.fixture(scope="module")
def images200():
    return world(200, seed=7)


# ---------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_seed_dependent():
    a, b, c = (syn.generate_image(s) for s in (5, 5, 6))
    assert a.image.tobytes() == b.image.tobytes() and a.encode() == b.encode()
    assert (a.objects, a.expressions, a.detections) == (b.objects, b.expressions, b.detections)
    assert a.image.tobytes() != c.image.tobytes() and a.expressions != c.expressions
    assert syn.image_rng(1, "val", 3).random() != syn.image_rng(1, "test", 3).random()


def test_every_expression_names_its_target(images200):
    for im in images200:
        assert len(im.expressions) >= 3
        assert len({e.text for e in im.expressions}) == len(im.expressions)
        for e in im.expressions:
            assert referent(e.text, im.objects, 224) is im.objects[e.target], e.text


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([64, 160, 320]),
       lo=st.integers(1, 4), extra=st.integers(0, 4))
def test_expressions_unique_for_any_seed_and_config(seed, size, lo, extra):
    cfg = SynthConfig(image_size=size, min_objects=lo, max_objects=lo + extra)
    im = syn.generate_image(seed, cfg)
    assert 1 <= len(im.objects) <= lo + extra
    for e in im.expressions:
        assert referent(e.text, im.objects, size) is im.objects[e.target], e.text
    for o in im.objects:
        assert 0 <= o.box[0] < o.box[2] <= size and 0 <= o.box[1] < o.box[3] <= size


def test_targets_have_distractors_whenever_the_image_allows(images200):
    def shares(objs, o):
        return any(p is not o and (p.shape == o.shape or p.color == o.color) for p in objs)

    with_distractors = 0
    for im in images200:
        if any(shares(im.objects, o) for o in im.objects):
            with_distractors += 1
            assert all(shares(im.objects, im.objects[e.target]) for e in im.expressions)
    assert with_distractors >= 190  # the per-image palettes make sharing the rule


def test_expression_types_present_and_balanced(images200):
    counts = collections.Counter(e.expr_type for im in images200 for e in im.expressions)
    total = sum(counts.values())
    assert set(counts) == {"attribute", "spatial", "relational"}
    assert all(0.25 <= c / total <= 0.42 for c in counts.values()), counts
    texts = {e.text for im in images200 for e in im.expressions}
    for word in ("ball", "box", "violet", "left of", "middle", "topmost", "that is"):
        assert any(word in t for t in texts), word  # synonyms and phrasings all show up


def test_boxes_match_the_drawn_pixels(images200):
    for im in images200[:60]:
        px = np.asarray(im.image).astype(int)
        for o in im.objects:
            x0, y0, x1, y1 = map(int, o.box)
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
            lo, hi = syn.SIZES[o.size]
            assert lo * 224 - 1 <= ((x1 - x0) * (y1 - y0)) ** 0.5 <= hi * 224 + 1
            inside = px[y0:y1, x0:x1]
            own = (inside == o.rgb).all(-1)
            assert own.mean() >= 0.3, (o, own.mean())  # its colour dominates its box
            for p in im.objects:
                if p.rgb != o.rgb:
                    assert (inside == p.rgb).all(-1).mean() < own.mean()
            if all(syn._overlap(o.box, p.box) == 0 for p in im.objects if p is not o):
                # An unoccluded object spans its box exactly: look 2 px beyond it too.
                wx, wy = max(x0 - 2, 0), max(y0 - 2, 0)
                ys, xs = np.nonzero((px[wy:y1 + 2, wx:x1 + 2] == o.rgb).all(-1))
                assert (xs.min() + wx, ys.min() + wy, xs.max() + wx + 1, ys.max() + wy + 1) == (
                    x0, y0, x1, y1)


def test_detector_noise_rates_match_the_constants(images200):
    objs = sum(len(im.objects) for im in images200)
    tps = [(im.objects[d.source], d) for im in images200 for d in im.detections
           if d.source is not None]
    fps = [d for im in images200 for d in im.detections if d.source is None]
    found = {(id(im), d.source) for im in images200 for d in im.detections if d.source is not None}
    assert abs(1 - len(found) / objs - syn.MISS_RATE) < 0.03
    assert len(tps) == len(found)  # at most one detection per object
    assert abs(np.mean([d.label != o.shape for o, d in tps]) - syn.LABEL_CONFUSION_RATE) < 0.03
    assert abs(np.mean([d.color is None for o, d in tps]) - syn.COLOR_MISSING_RATE) < 0.02
    wrong = np.mean([d.color not in (None, o.color) for o, d in tps])
    assert abs(wrong - syn.COLOR_ERROR_RATE) < 0.03
    assert abs(len(fps) / len(images200) - syn.FALSE_POSITIVES_PER_IMAGE) < 0.15
    dx = [(d.box[0] - o.box[0]) / (o.box[2] - o.box[0]) for o, d in tps]
    assert abs(np.std(dx) - syn.BOX_JITTER) < 0.015
    for im in images200:
        scores = [d.score for d in im.detections]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(0 <= d.box[0] < d.box[2] <= 224 and 0 <= d.box[1] < d.box[3] <= 224
                   for d in im.detections)
    assert np.mean([d.score for _, d in tps]) > np.mean([d.score for d in fps]) + 0.2


def _hashes(root: Path):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_world_layout_determinism_and_disjoint_splits(tmp_path):
    splits = {"train": 12, "val": 4, "test": 4}
    m = syn.write_world(str(tmp_path / "a"), seed=3, splits=splits, progress=False)
    syn.write_world(str(tmp_path / "b"), seed=3, splits=splits, progress=False)
    syn.write_world(str(tmp_path / "c"), seed=4, splits=splits, progress=False)
    ha, hb, hc = (_hashes(tmp_path / k) for k in "abc")
    assert ha == hb  # byte-identical worlds, manifest and Parquet included
    empty = "quarantine/part-00000.parquet"  # the same empty table in every valid world
    assert ha[empty] == hc[empty]
    assert not {d for k, d in ha.items() if k != empty} & set(hc.values())
    assert {k.split("/")[0] for k in ha} == {"samples", "images", "detections", "triplets",
                                              "captions", "files", "quarantine",
                                              "manifest.json"}
    assert m["counts"]["val"]["images"] == 4 and m["seed"] == 3
    assert storage.read_json(str(tmp_path / "a" / "manifest.json")) == m
    by_split = collections.defaultdict(set)
    for name, digest in ha.items():
        if name.startswith("files/"):
            by_split[name.split("-")[2]].add(digest)
    assert sum(len(v) for v in by_split.values()) == 20  # no repeated image anywhere
    for name in ("samples", "images", "detections", "triplets", "captions"):
        validate_table(storage.read_table(str(tmp_path / "a" / name)), name)
    s = storage.read_table(str(tmp_path / "a" / "samples")).to_pylist()
    assert s[0]["sample_id"] == "syn-s3-train-000000-e0" and s[0]["source"] == "gt"
    assert {r["split"] for r in s} == set(splits) and sum(m["expr_types"].values()) == len(s)


def test_write_world_skips_an_identical_world_and_regenerates_on_change(tmp_path):
    uri = str(tmp_path / "w")
    syn.write_world(uri, seed=1, splits={"train": 2}, progress=False)
    marker = tmp_path / "w" / "files" / "syn-s1-train-000000.png"
    marker.write_bytes(b"touched")
    syn.write_world(uri, seed=1, splits={"train": 2}, progress=False)
    assert marker.read_bytes() == b"touched"  # identical request: nothing rewritten
    syn.write_world(uri, seed=1, splits={"train": 2}, progress=False, force=True)
    assert marker.read_bytes() != b"touched"
    calls = []
    real = syn._write_tables
    syn._write_tables = lambda *a: calls.append(storage.exists(f"{uri}/manifest.json")) or real(*a)
    try:  # a changed request: the old manifest is gone while the new world is being written
        m = syn.write_world(uri, seed=1, splits={"train": 3}, progress=False)
    finally:
        syn._write_tables = real
    assert calls == [False] and m["counts"]["train"]["images"] == 3


def test_cli_synth_subprocess(tmp_path):
    out = tmp_path / "cli world"
    cmd = [sys.executable, "-m", "clipvg.cli", "synth", "--out", str(out), "--images", "5",
           "--val", "2", "--test", "1", "--seed", "2", "--image-size", "96"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"train 5 img/\d+ expr, val 2 img/\d+ expr, test 1 img/\d+ expr -> .*"
                     r"cli world in [\d.]+s", proc.stdout), proc.stdout
    manifest = storage.read_json(str(out / "manifest.json"))
    assert manifest["config"]["image_size"] == 96 and manifest["images"]["test"] == 1
    bad = subprocess.run(cmd[:6] + ["--seed", "-1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "seed" in bad.stdout
