"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, the random states
of torch (CPU and CUDA), NumPy and Python, the train loader's ``state_dict()`` when it has one,
and the run's history. See NOTE [ Exact resume ] in ``fastdata/train/loop.py``.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from fastdata.errors import SourceError


def seed_everything(seed: int) -> None:
    """Seeds torch (CPU and CUDA), NumPy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _random_states() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        # Plain Python values, so that torch.load(weights_only=True) reads the checkpoint.
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def plain(value: object) -> object:
    """Returns ``value`` with NumPy scalars turned into Python numbers, recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    return value


def _loader_state(loader: object) -> dict | None:
    """The loader's iteration state, or None when it keeps none (``fastdata.DataLoader``
    raises TypeError when it cannot save one, e.g. without torchdata; torch's DataLoader has
    no state_dict)."""
    if not hasattr(loader, "state_dict"):
        return None
    try:
        return plain(loader.state_dict())
    except TypeError:
        return None


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    loader: object,
    history: list[dict],
    steps: list[dict],
) -> str:
    """Writes a checkpoint atomically (temporary file, then rename); returns its path.

    Args:
        path: the checkpoint file.
        model, optimizer, scheduler, scaler: the training objects whose states are saved.
        loader: the train loader; its ``state_dict()`` is saved if it has one.
        history, steps: the run's per-epoch and per-log-step records.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict(),
        "loader": _loader_state(loader),
        "random": _random_states(),
        "history": history,
        "steps": steps,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return str(path)


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    loader: object,
) -> tuple[list[dict], list[dict]]:
    """Restores a checkpoint written by ``save_checkpoint`` into the given objects.

    Checkpoints are read with ``torch.load(weights_only=True)``: no code runs on loading.
    A loader's ``state_dict()`` must therefore hold Python values, tensors and NumPy
    scalars only (NumPy arrays are refused; store them as lists or tensors).

    Also restores the random states and, if both have one, the loader's state.

    Returns:
        The run's ``(history, steps)`` records up to the checkpoint.

    Raises:
        SourceError: the file cannot be read or is not a training checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise SourceError(str(path), f"cannot read the checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "optimizer" not in state:
        raise SourceError(str(path), "is not a training checkpoint; use build_model(checkpoint=)")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise SourceError(
            str(path),
            f"does not fit this {type(model).__name__} and its optimiser ({first}); resume with"
            " the model and arguments of the run that wrote it",
        ) from exc
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    _set_random_states(state["random"])
    return state["history"], state["steps"]
