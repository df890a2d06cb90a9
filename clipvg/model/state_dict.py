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


def mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """What keeps ``state`` from loading strictly into a module whose state is ``own``, as
    "missing keys [...], unexpected keys [...], shape mismatches [...]", or None if it fits."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or wrong):
        return None
    return (f"missing keys {short_list(missing)}, unexpected keys {short_list(unexpected)}, "
            f"shape mismatches {short_list(wrong)}")
