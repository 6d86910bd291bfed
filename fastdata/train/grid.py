"""A small grid search: train each combination briefly, compare validation metrics.

``parse_grid(["lr=1e-3,3e-4", "batch_size=64,128"])`` gives ``{"lr": [0.001, 0.0003],
"batch_size": [64, 128]}``. ``grid_search`` trains a fresh model (same seed) for every
combination: keys that are ``fit`` arguments (``lr``, ``optimizer``, ``weight_decay``,
``epochs``...) go to ``fit``, the others (``batch_size``, ``image_size``...) to the
``make_loaders`` function, so that one grid can vary both the optimisation and the data.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterable

from torch import nn

from fastdata.errors import FastdataError
from fastdata.train.checkpoint import seed_everything
from fastdata.train.loop import fit


def _parse_value(text: str) -> int | float | bool | str | None:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(specs: Iterable[str]) -> dict[str, list]:
    """Parses ``name=v1,v2,...`` items into a grid; numbers become int or float.

    Raises:
        FastdataError: an item has no ``=``, no name, no value, or a repeated name.
    """
    grid: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        items = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not items:
            raise FastdataError(
                f"bad grid item {spec!r}; write name=value1,value2 (e.g. lr=1e-3,3e-4)"
            )
        if name in grid:
            raise FastdataError(f"grid item {name!r} is given twice; list all values in one")
        grid[name] = [_parse_value(v) for v in items]
    return grid


def _check_types(grid: dict[str, list], params: dict[str, inspect.Parameter]) -> None:
    """Refuses values of the wrong kind for parameters whose default is a number or a string:
    ``lr=abc`` would otherwise fail deep inside the optimiser with a bare ``TypeError``."""
    for name, values in grid.items():
        default = params[name].default if name in params else inspect.Parameter.empty
        if isinstance(default, bool) or default is None or default is inspect.Parameter.empty:
            continue
        want = (int, float) if isinstance(default, float) else type(default)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, want):
                kind = "a number" if want == (int, float) else f"a {type(default).__name__}"
                raise FastdataError(
                    f"grid item {name}: {value!r} is not {kind} (e.g. {name}={default!r})"
                )


def combinations(grid: dict[str, list]) -> list[dict]:
    """Lists every combination of the grid's values, the last key varying fastest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def grid_search(
    grid: dict[str, list],
    make_loaders: Callable[..., tuple[Iterable, Iterable]],
    make_model: Callable[[], nn.Module],
    *,
    metric: str = "val_accuracy",
    seed: int = 0,
    **fit_kwargs,
) -> list[dict]:
    """Trains one model per combination of the grid and reports validation metrics.

    Args:
        grid: parameter name -> values (see ``parse_grid``).
        make_loaders: called with the combination's non-``fit`` parameters as keyword
            arguments; returns ``(train_loader, val_loader)``.
        make_model: returns a fresh model; called after seeding, so every run starts from
            the same weights.
        metric: key of the epoch record to rank by (higher is better), such as
            ``"val_accuracy"`` or ``"val_macro_f1"``; ties go to the lower validation loss.
        seed: seed of every run.
        **fit_kwargs: fixed ``fit`` arguments (``epochs``, ``steps_per_epoch``, ``device``...);
            grid values override them. Each run's progress bar is labelled with its
            combination (``[2/4] lr=0.1 batch_size=64``).

    Returns:
        One row per combination, best first: the parameters, then ``val_accuracy``,
        ``val_macro_f1``, ``val_loss``, ``train_loss``, ``samples_per_sec``,
        ``data_wait_share`` and ``seconds``.
    """
    fit_names = set(inspect.signature(fit).parameters) - {"model", "train_loader", "val_loader"}
    loader_params = inspect.signature(make_loaders).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in loader_params.values())
    unknown = [k for k in grid if k not in fit_names and not takes_any and k not in loader_params]
    if unknown:
        raise FastdataError(
            f"grid parameters {unknown} are neither fit() arguments nor make_loaders() arguments"
        )
    _check_types(grid, {**inspect.signature(fit).parameters, **loader_params})
    rows = []
    combos = combinations(grid)
    for index, combo in enumerate(combos, 1):
        for_fit = {k: v for k, v in combo.items() if k in fit_names}
        train_loader, val_loader = make_loaders(
            **{k: v for k, v in combo.items() if k not in fit_names}
        )
        seed_everything(seed)
        model = make_model()
        label = f"[{index}/{len(combos)}] " + " ".join(f"{k}={v}" for k, v in combo.items())
        show = fit_kwargs.get("progress", True) and label
        result = fit(model, train_loader, val_loader=val_loader,
                     **{**fit_kwargs, "seed": seed, **for_fit, "progress": show})  # fmt: skip
        last = result.history[-1]
        rows.append(
            {
                **combo,
                "val_accuracy": last.get("val_accuracy"),
                "val_macro_f1": last.get("val_macro_f1"),
                "val_loss": last.get("val_loss"),
                "train_loss": last["train_loss"],
                "samples_per_sec": result.samples_per_sec,
                "data_wait_share": result.data_wait_share,
                "seconds": sum(h["seconds"] for h in result.history),
            }
        )

    def rank(row: dict) -> tuple[float, float]:
        # Higher metric first; among equal metrics, the lower validation (else training) loss.
        value = row.get(metric)
        loss = row.get("val_loss") if row.get("val_loss") is not None else row["train_loss"]
        return (float("inf") if value is None else -value, loss)

    return sorted(rows, key=rank)


def format_table(rows: list[dict]) -> str:
    """Formats grid-search rows as a markdown table (floats with 4 significant digits)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
