"""Fresh synthetic training samples: a new image for every few samples, never a repeat.

With ``data.fresh_train_images: true`` the local trainer draws its training samples from this
stream instead of the fixed ``train`` split of the synthetic world: the same generator and
config (so the same world: object counts, distractor rule, expression types), but images from
their own seed stream (``fresh-e<epoch>``), so a model cannot memorise a small training set.
Validation and test stay the world's fixed held-out splits.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Iterator

from torch.utils.data import IterableDataset, get_worker_info

from clipvg.config import SynthConfig
from clipvg.sources.synthetic.scenes import generate_image, image_rng

SHUFFLE_BUFFER = 256  # samples; an image's 3-5 expressions would otherwise sit in one batch


class FreshWorld(IterableDataset):
    """``epoch_samples`` new ``(transformed sample, sample_id)`` items per epoch.

    Args:
        synth: the world's generator config.
        seed: the world seed (streams ``fresh-e<epoch>`` of it are disjoint from its splits).
        transform: ``(image, box_xyxy, text) -> sample`` (the training transform).
        epoch_samples: samples per epoch (the fixed split's size keeps epochs comparable).
        easy_to_hard_epochs: epochs over which scenes grow to the world's object counts
            (:func:`scene_config_at`); 0 = the world's counts from the start.
    """

    def __init__(self, synth: SynthConfig, seed: int, transform: Callable, epoch_samples: int,
                 easy_to_hard_epochs: int = 0):
        if epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {epoch_samples}")
        self.synth, self.seed, self.transform = synth, seed, transform
        self.epoch_samples, self.epoch = epoch_samples, 0
        self.easy_to_hard_epochs = easy_to_hard_epochs

    def set_epoch(self, epoch: int) -> None:
        """Use the images of ``epoch`` (each epoch has its own stream)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_samples

    def _raw(self) -> Iterator[tuple]:
        info = get_worker_info()
        index, stride = (info.id, info.num_workers) if info else (0, 1)
        stream = f"fresh-e{self.epoch}"
        synth = scene_config_at(self.synth, self.epoch, self.easy_to_hard_epochs)
        while True:
            im = generate_image(image_rng(self.seed, stream, index), synth,
                                image_id=f"syn-s{self.seed}-{stream}-{index:07d}")
            for k, e in enumerate(im.expressions):
                yield im.image, im.objects[e.target].box, e.text, f"{im.image_id}-e{k}"
            index += stride

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        share = len(range(worker, self.epoch_samples, workers))  # this worker's part of the epoch
        rng = random.Random(hash((self.seed, self.epoch, worker)))
        buffer: list[tuple] = []
        raw = self._raw()
        for _ in range(share):
            while len(buffer) < SHUFFLE_BUFFER:
                buffer.append(next(raw))
            image, box, text, sample_id = buffer.pop(rng.randrange(len(buffer)))
            yield self.transform(image, list(box), text), sample_id


def scene_config_at(synth: SynthConfig, epoch: int, ramp_epochs: int) -> SynthConfig:
    """The scene config of ``epoch`` in an easy-to-hard stream of ``ramp_epochs`` epochs.

    Scenes start with at most 2 objects (one distractor: the text already decides) and grow
    linearly to ``synth.max_objects`` by epoch ``ramp_epochs``; the world's config after it.
    """
    if ramp_epochs <= 0 or epoch >= ramp_epochs or synth.max_objects <= 2:
        return synth
    most = min(synth.max_objects, 2 + round((synth.max_objects - 2) * epoch / ramp_epochs))
    return dataclasses.replace(synth, min_objects=min(synth.min_objects, most), max_objects=most)
