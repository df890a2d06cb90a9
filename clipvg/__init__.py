"""clipvg: CLIP-VG visual grounding (IEEE TMM 2023) with self-paced curricula, built for Ray.

``import clipvg`` never starts or imports Ray; only :mod:`clipvg.distributed` does.
"""

__version__ = "0.1.0"
