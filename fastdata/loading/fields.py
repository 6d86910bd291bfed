"""Non-image fields of a sample: decoding from bytes and collation into a batch.

A field is named by its extension (``"cls"``, ``"npy"``, ``"json"``, ``"txt"``, or any
other such as ``"tokens.npy"``) and has a *kind* that says how to decode and collate it:

========== ======================================== =====================================
kind       decoded from                             collated into
========== ======================================== =====================================
``int``    decimal text (the ``.cls`` convention)   int64 tensor ``(B,)``
``array``  ``.npy`` bytes                           tensor ``(B, *shape)`` (equal shapes)
``tokens`` 1-D integer ``.npy`` or a JSON list      ``Padded(values (B, L), mask (B, L))``
``json``   UTF-8 JSON                               list of the decoded objects
``text``   UTF-8 text                               list of ``str``
``bytes``  anything                                 list of ``bytes``
========== ======================================== =====================================

Single samples (``ShardDataset.__iter__``, which torch's DataLoader reads) carry ``array``
fields as writable tensors and ``tokens`` fields as ``TokenIds`` (a 1-D int64 tensor)
that torch's ``default_collate`` pads into the same ``Padded`` batch (NOTE [ Tokens under
torch's collate ]).

``"__key__"`` and ``"__url__"`` deliver the sample's key and shard as text. The kind
defaults from the extension's last part (``cls`` → int, ``npy`` → array,
``json`` → json, ``txt``/``text`` → text, otherwise bytes). Variable-length sequences
(token ids for text models) are padded to the longest in the batch with ``pad_value``;
``mask`` is True where a position holds a real token.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data._utils.collate import default_collate_fn_map

from fastdata.errors import DecodeError

__all__ = ["IMAGE_FIELDS", "KINDS", "Padded", "TokenIds", "collate_field", "decode_field", "decode_npy",
           "field_kinds", "sample_field"]

# Extensions that hold an image: encoded files, or uint8 pixels stored as .npy.
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "npy")

KINDS = ("int", "array", "tokens", "json", "text", "bytes")
_BY_SUFFIX = {"cls": "int", "npy": "array", "json": "json", "txt": "text", "text": "text"}
_NPY_MAGIC = b"\x93NUMPY"
_npy_headers: dict[bytes, tuple[np.dtype, tuple[int, ...], bool, int]] = {}


class Padded(NamedTuple):
    """A batch of variable-length sequences padded to the longest.

    Attributes:
        values: ``(B, L)`` int64 tensor, padded with the pad value.
        mask: ``(B, L)`` bool tensor, True at real positions.
    """

    values: torch.Tensor
    mask: torch.Tensor


def field_kinds(fields: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """Normalises a field list (kinds by extension) or mapping ``{ext: kind}``.

    Raises:
        ValueError: an unknown kind.
    """
    if isinstance(fields, str):
        fields = [fields]
    items = fields.items() if isinstance(fields, Mapping) else ((f, None) for f in fields)
    out = {}
    for ext, kind in items:
        ext = ext if ext.startswith("__") else ext.lstrip(".").lower()
        kind = kind or ("text" if ext.startswith("__") else _BY_SUFFIX.get(ext.rsplit(".", 1)[-1], "bytes"))
        if kind not in KINDS:
            raise ValueError(f"field {ext!r}: unknown kind {kind!r}; use one of {KINDS}")
        out[ext] = kind
    return out


def decode_npy(data: bytes) -> np.ndarray:
    """A read-only array viewing ``.npy`` bytes (headers are parsed once per distinct header).

    Raises:
        ValueError: not ``.npy`` data, or an object array.
    """
    if data[:6] != _NPY_MAGIC:
        raise ValueError("not .npy data (bad magic)")
    if data[6] == 1:
        hlen, start = int.from_bytes(data[8:10], "little"), 10
    else:
        hlen, start = int.from_bytes(data[8:12], "little"), 12
    header = bytes(data[start : start + hlen])
    parsed = _npy_headers.get(header)
    if parsed is None:
        meta = ast.literal_eval(header.decode("latin1"))
        dtype = np.dtype(meta["descr"])
        if dtype.hasobject:
            raise ValueError(".npy with Python objects cannot be read safely")
        parsed = (dtype, tuple(meta["shape"]), bool(meta["fortran_order"]), start + hlen)
        if len(_npy_headers) < 1024:
            _npy_headers[header] = parsed
    dtype, shape, fortran, offset = parsed
    count = int(np.prod(shape)) if shape else 1
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def decode_field(kind: str, data: bytes, *, url: str | None, key: str | None, field: str) -> Any:
    """Decodes one field's bytes by its kind.

    Raises:
        DecodeError: the bytes do not hold that kind; names shard, key and field.
    """
    try:
        if kind == "int":
            return int(data)
        if kind == "array":
            return decode_npy(data)
        if kind == "tokens":
            seq = decode_npy(data) if data[:6] == _NPY_MAGIC else np.asarray(json.loads(data))
            if seq.ndim != 1 or seq.dtype.kind not in "iub":
                raise ValueError(f"tokens must be a 1-D integer sequence, got {seq.dtype} {seq.shape}")
            return seq
        if kind == "json":
            return json.loads(data)
        if kind == "text":
            return data if isinstance(data, str) else bytes(data).decode("utf-8")
        return bytes(data)
    except (ValueError, TypeError, UnicodeDecodeError, SyntaxError, KeyError) as exc:
        raise DecodeError(url, key, field, f"cannot decode as {kind}: {exc}") from exc


def collate_field(kind: str, field: str, values: list, pad_value: int = 0) -> Any:
    """Collates one field's values over a batch (see the module docstring).

    Raises:
        ValueError: ``array`` values of different shapes (use kind ``tokens`` for
            variable-length sequences).
    """
    if kind == "int":
        return torch.tensor(values, dtype=torch.int64)
    if kind == "array":
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise ValueError(
                f"field {field!r}: arrays of different shapes {sorted(shapes)} in one batch; "
                f"declare it as fields={{{field!r}: 'tokens'}} to pad 1-D sequences"
            )
        return torch.from_numpy(np.stack(values))
    if kind == "tokens":
        return _pad(values, pad_value)
    return list(values)


def _pad(values: list[np.ndarray], pad_value: int) -> Padded:
    length = max((len(v) for v in values), default=0)
    out = np.full((len(values), length), pad_value, dtype=np.int64)
    mask = np.zeros((len(values), length), dtype=bool)
    for i, v in enumerate(values):
        out[i, : len(v)] = v
        mask[i, : len(v)] = True
    return Padded(torch.from_numpy(out), torch.from_numpy(mask))


class TokenIds(torch.Tensor):
    """One sample's token ids: a 1-D int64 tensor that torch's ``default_collate`` pads.

    NOTE [ Tokens under torch's collate ]
    torch's DataLoader collates single samples with ``default_collate``, which stacks
    tensors and so fails on sequences of different lengths. torch lets a type bring its own
    collate function through ``default_collate_fn_map`` (the documented extension point of
    ``torch.utils.data.default_collate``); this module registers one for ``TokenIds`` only,
    which pads the batch to its longest sequence exactly as ``collate_field`` does on the
    batch path, so both loaders give the same ``Padded(values, mask)``. The pad value
    travels with each sample (``pad_value`` attribute).
    """

    pad_value: int = 0


def _collate_token_ids(batch: list, *, collate_fn_map=None) -> Padded:
    return _pad([t.numpy() for t in batch], int(getattr(batch[0], "pad_value", 0)))


default_collate_fn_map[TokenIds] = _collate_token_ids


def sample_field(kind: str, value: Any, pad_value: int = 0) -> Any:
    """One sample's decoded field as single samples deliver it: arrays become writable
    tensors (the decoded array is a read-only view of the shard's bytes), token sequences
    ``TokenIds``; other kinds are returned unchanged."""
    if kind == "array":
        return torch.from_numpy(np.array(value))
    if kind == "tokens":
        ids = torch.from_numpy(np.asarray(value, dtype=np.int64).copy()).as_subclass(TokenIds)
        ids.pad_value = int(pad_value)
        return ids
    return value
