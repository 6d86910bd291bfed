"""Synthetic token batches in the format of ``fastdata.TokenDataset`` (packed and padded),
for the language-model trainer's tests; built from plain lists, independently of the loader.

The documents count upwards: each starts at a random token and adds ``step`` (mod the
vocabulary) at every position, so a model that has learned the rule predicts every token
after the first exactly.
"""

from __future__ import annotations

import torch

IGNORE = -100


def documents(n: int, vocab: int, seed: int, step: int = 1, lengths=(5, 14)) -> list[list[int]]:
    """``n`` counting documents of random lengths in ``[lengths[0], lengths[1])``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lengths[0], lengths[1], (1,), generator=g))
        start = int(torch.randint(0, vocab, (1,), generator=g))
        out.append([(start + step * i) % vocab for i in range(length)])
    return out


def packed(docs: list[list[int]], batch_size: int, seq_len: int) -> list[dict]:
    """Greedy packing into rows of ``seq_len`` (a document that does not fit starts the next
    row; the rest of the row is padding), as ``mode="aligned"``: no target across a document
    end or into padding."""
    rows, row = [], []
    for doc in docs:
        doc = doc[:seq_len]
        if sum(map(len, row)) + len(doc) > seq_len:
            rows.append(row)
            row = []
        row.append(doc)
    rows.append(row)
    batches = []
    for i in range(0, len(rows) - batch_size + 1, batch_size):
        ids, tgt, pos, seg = (torch.full((batch_size, seq_len), v, dtype=torch.int64)
                              for v in (0, IGNORE, 0, -1))  # fmt: skip
        for b, row in enumerate(rows[i : i + batch_size]):
            at = 0
            for s, doc in enumerate(row):
                n = len(doc)
                ids[b, at : at + n] = torch.tensor(doc)
                tgt[b, at : at + n - 1] = torch.tensor(doc[1:])
                pos[b, at : at + n] = torch.arange(n)
                seg[b, at : at + n] = s
                at += n
        lengths = [len(d) for r in rows[i : i + batch_size] for d in r]
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        batches.append({"input_ids": ids, "targets": tgt, "position_ids": pos,
                        "segment_ids": seg.int(), "cu_seqlens": cu})  # fmt: skip
    return batches


def padded(docs: list[list[int]], labels: list[int], batch_size: int, seq_len: int) -> list[dict]:
    """One document per row, right-padded, with its class label."""
    batches = []
    for i in range(0, len(docs) - batch_size + 1, batch_size):
        ids = torch.zeros(batch_size, seq_len, dtype=torch.int64)
        tgt = torch.full((batch_size, seq_len), IGNORE, dtype=torch.int64)
        mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
        lengths = torch.zeros(batch_size, dtype=torch.int64)
        for b, doc in enumerate(docs[i : i + batch_size]):
            doc = doc[:seq_len]
            ids[b, : len(doc)] = torch.tensor(doc)
            tgt[b, : len(doc) - 1] = torch.tensor(doc[1:])
            mask[b, : len(doc)] = True
            lengths[b] = len(doc)
        batches.append({"input_ids": ids, "targets": tgt, "attention_mask": mask,
                        "lengths": lengths, "labels": torch.tensor(labels[i : i + batch_size])})  # fmt: skip
    return batches


class ShuffledBatches:
    """A re-iterable list of batches shuffled each epoch by the global torch generator (as
    torch's samplers are), so that only an exact restore of the random state replays it."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for i in torch.randperm(len(self.batches)).tolist():
            yield self.batches[i]
