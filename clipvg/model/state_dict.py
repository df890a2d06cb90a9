"""Small helpers shared by every reader of weight files (CLIP towers, official checkpoints)."""

from __future__ import annotations

from torch import Tensor


def strip_module_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix a DDP-wrapped model adds to every key (if all keys have it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def short_list(items: list[str], n: int = 8) -> str:
    """``[a, b, ... (+k more)]``: key lists in error messages stay readable."""
    if not items:
        return "[]"
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return "[" + ", ".join(items[:n]) + more + "]"
