"""The synthetic world's simulated scene-graph model and captioner: their noise rates, that the
images did not change when they were added, and that each pseudo-label source built on them
has its own measurable fraction of wrong boxes (IoU < 0.5 with every ground-truth object)."""

import hashlib
import re
import shutil

import numpy as np
import pytest

from clipvg.config import SynthConfig
from clipvg.data import storage
from clipvg.sources.synthetic import scenes as syn
from clipvg.sources.synthetic import captioner as cap
from clipvg.sources.synthetic import scenegraph as sg
from clipvg.sources.synthetic.tables import tables_of_images
from clipvg.sources.synthetic.text import SHAPES
from clipvg.pseudo.caption import lemma
from clipvg.pseudo.common import iou
from clipvg.pseudo.generate import generate_for_images

N = 400


@pytest.fixture(scope="module")
def images():
    return [syn.generate_image(syn.image_rng(0, "train", i), image_id=f"syn-{i:04d}")
            for i in range(N)]


def test_images_expressions_detections_unchanged_by_the_new_simulators():
    h = hashlib.sha256()  # digest computed with the code from before triplets and captions
    for i in range(3):
        im = syn.generate_image(syn.image_rng(3, "train", i))
        h.update(im.image.tobytes())
        h.update(repr((im.objects, im.expressions, im.detections)).encode())
    assert h.hexdigest() == "cccca69455b656b3f8cef076932a6de472447b498e4b6b42bfc6f4e0f4c6415a"
    a, b = (syn.generate_image(syn.image_rng(3, "train", 0)) for _ in range(2))
    assert (a.triplets, a.captions) == (b.triplets, b.captions)


def test_scene_graph_noise_rates(images):
    trips = [(im, t) for im in images for t in im.triplets]
    errs = [set(t.errors) for _, t in trips]
    assert abs(np.mean(["swap" in e for e in errs]) - sg.SWAP_RATE) < 0.02
    assert abs(np.mean(["predicate" in e for e in errs]) - sg.PREDICATE_ERROR_RATE) < 0.02
    real = [e for e in errs if "hallucinated" not in e]
    assert abs(np.mean(["label" in e for e in real]) - sg.LABEL_CONFUSION_RATE) < 0.02
    assert 0.05 < np.mean(["hallucinated" in e for e in errs]) < 0.2
    dx = [(t.subject_box[0] - im.objects[t.subject_source].box[0])
          / (im.objects[t.subject_source].box[2] - im.objects[t.subject_source].box[0])
          for im, t in trips if t.subject_source is not None and "swap" not in t.errors]
    assert abs(np.std(dx) - sg.BOX_JITTER) < 0.02
    for im, t in trips:
        if t.subject_source is None or t.object_source is None or "predicate" in t.errors:
            continue
        first, second = t.subject_source, t.object_source
        if "swap" in t.errors:
            first, second = second, first
        holds = sg.true_predicates(im.objects[first].box, im.objects[second].box, 224)
        assert t.predicate in (holds or ["near"]), (t, holds)
    product = {True: [], False: []}
    for _, t in trips:
        product[not t.errors].append(t.subject_score * t.predicate_score * t.object_score)
    assert np.mean(product[True]) > np.mean(product[False]) + 0.1
    assert min(product[True]) < max(product[False])  # lower on average, yet overlapping


def test_single_object_scenes_still_get_triplets():
    cfg = SynthConfig(min_objects=1, max_objects=1)
    ims = [syn.generate_image(syn.image_rng(1, "train", i), cfg) for i in range(60)]
    assert all(len(im.objects) == 1 and len(im.triplets) >= 2 for im in ims)
    subjects = [t.subject_source for im in ims for t in im.triplets]
    assert 0.3 < np.mean([s is None for s in subjects]) < 0.7  # invented subject: wrong box


def test_captioner_noise_rates(images):
    caps = [c for im in images for c in im.captions]
    assert all(1 <= len(im.captions) <= 2 for im in images)
    assert all(len({c.text for c in im.captions}) == len(im.captions) for im in images)
    first = [set(e for e in c.errors if not e.startswith("second_")) for c in caps]
    assert abs(np.mean(["hallucinated" in e for e in first]) - cap.HALLUCINATED_FIRST_RATE) < 0.04
    assert abs(np.mean(["noun" in e for e in first]) - cap.WRONG_NOUN_RATE) < 0.04
    single = [e for c, e in zip(caps, first) if "two " not in c.text]
    assert abs(np.mean(["color" in e for e in single]) - cap.WRONG_COLOR_RATE) < 0.05
    for im in images:
        for c in im.captions:
            if c.first_source is not None and not c.errors and "two " not in c.text:
                o = im.objects[c.first_source]
                assert f"{o.color} {o.shape}" in c.text, c
    clean = [c.score for c in caps if not c.errors]
    noisy = [c.score for c in caps if c.errors]
    assert np.mean(clean) > np.mean(noisy) + 0.05 and min(clean) < max(noisy)


def _source_quality(images, source):
    """(rows, wrong-box fraction, noun-mismatch fraction) of a source on ``images``."""
    t = tables_of_images(images, "train", 224)
    out = generate_for_images(source, t["images"], t["detections"], t["triplets"],
                              t["captions"], seed=0, dataset="synthetic").to_pylist()
    objects = {im.image_id: im.objects for im in images}
    wrong = mismatch = 0
    for r in out:
        ious = [iou(r["box"], o.box) for o in objects[r["image_id"]]]
        if max(ious) < 0.5:
            wrong += 1
            continue
        shape = objects[r["image_id"]][int(np.argmax(ious))].shape
        words = [lemma(w) for w in re.findall(r"[a-z]+", r["text"])]
        mismatch += next((w for w in words if w in SHAPES), None) != shape
    return len(out), wrong / len(out), mismatch / len(out)


def test_each_source_has_its_own_fraction_of_wrong_boxes(images):
    q = {s: _source_quality(images[:300], s) for s in ("template", "relation", "caption")}
    for s, (n, wrong, mismatch) in q.items():
        print(f"{s}: {n} samples on 300 images, wrong box {wrong:.3f}, "
              f"noun/box mismatch {mismatch:.3f}")
    wrong = {s: v[1] for s, v in q.items()}
    assert 0.01 < wrong["template"] < 0.08  # detector false positives among the top 3
    assert 0.05 < wrong["relation"]  # invented subjects, big jitter
    assert 0.003 < wrong["caption"] < 0.05  # mostly the right box, often the wrong referent
    assert wrong["relation"] > max(wrong["template"], wrong["caption"]) + 0.03
    assert len({round(v, 3) for v in wrong.values()}) == 3


def test_write_world_regenerates_a_world_from_before_the_new_tables(tmp_path):
    uri = str(tmp_path / "w")
    syn.write_world(uri, seed=1, splits={"train": 2}, progress=False)
    old = storage.read_json(f"{uri}/manifest.json")
    assert old["counts"]["train"]["triplets"] > 0 and "captions" in old["tables"]
    for key in ("scene_graph", "captioner"):
        old.pop(key)
    shutil.rmtree(tmp_path / "w" / "triplets")
    storage.write_json(old, f"{uri}/manifest.json")
    m = syn.write_world(uri, seed=1, splits={"train": 2}, progress=False)
    assert m["scene_graph"]["swap_rate"] == sg.SWAP_RATE
    assert storage.read_table(f"{uri}/triplets").num_rows == m["counts"]["train"]["triplets"]
