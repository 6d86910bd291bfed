"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, the random states
of torch (CPU and CUDA), NumPy and Python, the train loader's ``state_dict()`` when it has one,
and the run's history. See NOTE [ Exact resume ] in ``fastdata/train.py``.
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
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}  # fmt: skip
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


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
        "loader": loader.state_dict() if hasattr(loader, "state_dict") else None,
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

    A training checkpoint is a pickle (it holds the random states and the loader's state):
    load only files you trust. Weights alone load safely with ``fastdata.models``.

    Also restores the random states and, if both have one, the loader's state.

    Returns:
        The run's ``(history, steps)`` records up to the checkpoint.

    Raises:
        SourceError: the file cannot be read or is not a training checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise SourceError(str(path), f"cannot read the checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "optimizer" not in state:
        raise SourceError(str(path), "is not a training checkpoint; use build_model(checkpoint=)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if state["loader"] is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state["loader"])
    rs = state["random"]
    torch.set_rng_state(rs["torch"])
    np.random.set_state(rs["numpy"])
    random.setstate(rs["python"])
    if "cuda" in rs and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rs["cuda"])
    return state["history"], state["steps"]
