"""configs/demo.yaml's generator options against its world: Pseudo-Q's 1/64 small-box floor
drops (nearly) every small object of the demo world (side 9-12 % of the image), so the demo lowers it;
with the demo's options the template and caption sources label small objects too."""

from pathlib import Path

import numpy as np
import pytest

from clipvg.config import load_config
from clipvg.sources.synthetic import scenes as syn
from clipvg.sources.synthetic.tables import tables_of_images
from clipvg.pseudo.common import iou
from clipvg.pseudo.generate import generate_for_images

DEMO = Path(__file__).resolve().parents[2] / "configs/demo.yaml"
N = 150


@pytest.fixture(scope="module")
def demo():
    cfg = load_config(DEMO)
    images = [syn.generate_image(syn.image_rng(0, "train", i), cfg.data.synth, image_id=f"syn-{i:04d}")
              for i in range(N)]
    return cfg, images, tables_of_images(images, "train", cfg.data.synth.image_size)


def _small_objects_labelled(images, tables, source, options) -> tuple[int, int]:
    """(small objects with a right-box label, small objects) of ``source`` under ``options``."""
    t = tables
    out = generate_for_images(source, t["images"], t["detections"], t["triplets"], t["captions"],
                              seed=0, dataset="synthetic", options=options).to_pylist()
    boxes = {}
    for r in out:
        boxes.setdefault(r["image_id"], []).append(r["box"])
    small = [(im.image_id, o.box) for im in images for o in im.objects if o.size == "small"]
    hit = sum(any(iou(b, box) >= 0.5 for b in boxes.get(image_id, [])) for image_id, box in small)
    return hit, len(small)


@pytest.mark.parametrize("source", ["template", "caption"])
def test_the_demo_options_let_a_source_label_the_small_objects(demo, source):
    cfg, images, tables = demo
    hit_default, small = _small_objects_labelled(images, tables, source, {})
    hit_demo, _ = _small_objects_labelled(images, tables, source, cfg.curriculum.generators[source])
    print(f"{source}: small objects labelled {hit_default}/{small} (Pseudo-Q floor), "
          f"{hit_demo}/{small} (demo options)")
    assert small > 0.2 * N
    # the floor hides them (all in a one-object world; in the demo's 3-6-object world a few
    # small objects still get a right box from a detection drawn larger than the object, e.g.
    # 5 of 238 for the template source on seed 0): why the demo lowers it
    assert hit_default <= 0.05 * small
    # measured on seed 0 (238 small objects in 150 images): template 136, caption 51 (a caption
    # names only some of a 3-6-object scene's objects, so fewer of them get a label at all)
    assert hit_demo > {"template": 0.5, "caption": 0.15}[source] * small
    assert hit_demo >= 10 * max(hit_default, 1)


def test_the_demo_floor_drops_no_detection_of_its_world(demo):
    cfg, images, _ = demo
    size = cfg.data.synth.image_size
    areas = np.array([(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]) / size ** 2
                      for im in images for d in im.detections])
    for source in ("template", "caption"):
        assert areas.min() >= cfg.curriculum.generators[source]["min_area_frac"], source
