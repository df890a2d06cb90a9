"""Suite-wide fixtures.

Torch runs single-threaded in tests: the models are tiny, the machine has 2 cores, and torch's
OpenMP threads then spend more time waiting on each other than computing (measured: the model
tests took 40-50 s with 2 threads under load, 10 s with 1).
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = REPO / "tests" / "fixtures" / "clipvg_official" / "tiny"


@pytest.fixture(scope="session")
def official_cases() -> dict:
    """``cases.pt`` of the committed official ``tiny`` fixture (inputs, boxes, losses, raw images)."""
    path = OFFICIAL_TINY / "cases.pt"
    assert path.exists(), f"the committed official fixture is missing: {path}"
    return torch.load(path, map_location="cpu", weights_only=True)
