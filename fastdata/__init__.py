"""fastdata: fast PyTorch input pipelines.

WebDataset-layout shards (write, read, convert, verify), a drop-in ``DataLoader`` and
compiled transforms.
"""

from fastdata.errors import DecodeError, FastdataError, ShardError, SourceError
from fastdata.tario import iter_samples
from fastdata.writer import ShardWriter

__all__ = [
    "DecodeError",
    "FastdataError",
    "ShardError",
    "SourceError",
    "ShardWriter",
    "iter_samples",
]

__version__ = "0.1.0"
