"""Tests of the grid search (fastdata.train.grid)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastdata.errors import FastdataError
from fastdata.train.grid import combinations, format_table, grid_search, parse_grid


def test_parse_grid():
    grid = parse_grid(["lr=1e-3,3e-4", "batch_size=64,128", "optimizer=sgd,adamw", "amp=true"])
    assert grid == {
        "lr": [1e-3, 3e-4],
        "batch_size": [64, 128],
        "optimizer": ["sgd", "adamw"],
        "amp": [True],
    }
    assert isinstance(grid["batch_size"][0], int)
    assert parse_grid(["weight-decay=0"]) == {"weight_decay": [0]}
    for bad in (["lr"], ["=1,2"], ["lr="], ["lr=1", "lr=2"]):
        with pytest.raises(FastdataError, match="grid item"):
            parse_grid(bad)


def test_combinations_cover_the_product():
    combos = combinations({"a": [1, 2, 3], "b": ["x", "y"]})
    assert len(combos) == 6 and len({tuple(c.items()) for c in combos}) == 6
    assert combos[:2] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.0 * y[:, None]
    return TensorDataset(x, y)


def test_grid_search_routes_parameters_and_ranks():
    calls = []

    def make_loaders(batch_size: int):
        calls.append(batch_size)
        return DataLoader(_data(64, 0), batch_size=batch_size), DataLoader(_data(40, 1), 20)

    rows = grid_search(
        {"lr": [0.5, 0.0], "batch_size": [8, 16]},
        make_loaders,
        lambda: nn.Linear(4, 2),
        epochs=2,
        scheduler=None,
        progress=False,
    )
    assert sorted(calls) == [8, 8, 16, 16]
    assert len(rows) == 4
    accuracies = [r["val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    # lr=0 leaves the (seeded, identical) initial model untouched: same score for both sizes.
    frozen = [r for r in rows if r["lr"] == 0.0]
    assert frozen[0]["val_accuracy"] == frozen[1]["val_accuracy"]
    assert rows[0]["lr"] == 0.5 and rows[0]["val_accuracy"] > 0.9
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| lr | batch_size | val_accuracy |")
    assert len(table.splitlines()) == 6


def test_grid_search_rejects_unknown_parameters():
    with pytest.raises(FastdataError, match="neither fit"):
        grid_search({"colour": ["red"]}, lambda batch_size=4: ([], []), lambda: nn.Linear(1, 1))


def test_grid_ties_go_to_the_lower_loss_and_bars_name_the_combination(monkeypatch):
    """Equal accuracies are ranked by validation loss; each run's bar names its combination."""
    import fastdata.train.grid as grid_module

    outcomes = {0.1: (0.5, 6662.0), 0.2: (0.5, 10.68), 0.3: (0.25, 1.0)}
    seen = []

    def fake_fit(model, train_loader, *, val_loader=None, lr=0.1, progress=True, **kw):
        from fastdata.train.loop import TrainResult

        seen.append(progress)
        acc, loss = outcomes[lr]
        return TrainResult(history=[{"val_accuracy": acc, "val_loss": loss, "train_loss": 1.0,
                                     "seconds": 1.0, "samples": 1, "data_wait_share": 0.0}])  # fmt: skip

    monkeypatch.setattr(grid_module, "fit", fake_fit)
    rows = grid_search({"lr": [0.1, 0.2, 0.3]}, lambda: ([], None), lambda: nn.Linear(1, 1))
    assert [r["lr"] for r in rows] == [0.2, 0.1, 0.3]
    assert seen == ["[1/3] lr=0.1", "[2/3] lr=0.2", "[3/3] lr=0.3"]
