"""fastdata: fast PyTorch input pipelines.

WebDataset-layout shards (write, read, convert, verify), a drop-in ``DataLoader`` and
compiled transforms. The torch-based names (``DataLoader``, ``ShardDataset``,
``transforms``...) are imported on first use, so that the shard tools start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastdata.errors import DecodeError, FastdataError, ShardError, SourceError
from fastdata.shards.tario import iter_samples
from fastdata.shards.writer import ShardWriter

_LAZY = {
    "DataLoader": ("fastdata.loading.dataloader", "DataLoader"),
    "get_worker_info": ("fastdata.loading.dataloader", "get_worker_info"),
    "ShardDataset": ("fastdata.loading.shard_dataset", "ShardDataset"),
    "TokenDataset": ("fastdata.loading.tokens", "TokenDataset"),
    "transforms": ("fastdata.transforms", None),
}

__all__ = [
    "DataLoader",
    "DecodeError",
    "FastdataError",
    "ShardDataset",
    "ShardError",
    "ShardWriter",
    "SourceError",
    "TokenDataset",
    "get_worker_info",
    "iter_samples",
    "transforms",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fastdata' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
