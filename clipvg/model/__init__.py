"""CLIP-VG on open_clip towers: backbone, fusion, model, clipvg's own weights format (``io``)
and the official-checkpoint converter.

Names are resolved lazily (PEP 562) so that importing one submodule, e.g. the converter's safe
checkpoint reader, does not pay for importing open_clip.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CLIPBackbone": "backbone", "WeightsLoadError": "backbone", "build_backbone": "backbone",
    "default_taps": "backbone",
    "CLIPVG": "clipvg", "build_model": "clipvg", "compute_patch_mask": "clipvg",
    "count_parameters": "clipvg",
    "VLFusion": "fusion", "build_fusion": "fusion",
    "ConversionError": "io", "export_model": "io", "load_model": "io",
    "UnsafeCheckpointError": "convert", "load_untrusted_checkpoint": "convert",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"clipvg.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'clipvg.model' has no attribute {name!r}")
