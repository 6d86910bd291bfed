"""Token streaming: ``TokenDataset`` against nanoGPT's ``get_batch`` and torch's DataLoader.

The same random uint16 tokens (documents of random length, each ending with an
end-of-document token) are written twice into a scratch folder: as token shards with their
index (``fastdata.shards.tokens.write_token_shard``), and as one flat file that nanoGPT's
``train.bin`` would be. Each variant delivers ``(B, T)`` int64 input and target batches:

- ``fastdata``: ``TokenDataset(mode="concat", shuffle=True)`` through ``fastdata.DataLoader``
  (one background thread); its batches also carry position and segment ids and ``cu_seqlens``;
- ``nanogpt``: nanoGPT's way, written here from its description: every batch maps the flat
  file again, draws ``B`` random window starts, and stacks ``torch.from_numpy(window.astype(
  np.int64))`` for inputs and for targets; in the calling thread, as nanoGPT does;
- ``torch``: ``torch.utils.data.DataLoader(shuffle=True, num_workers=2)`` over a map-style
  dataset whose item ``r`` is concat row ``r`` read from the shards with ``open_token_shard``.

Every repetition runs one variant in a fresh child process (variants alternate); the child
warms up on a few batches, then times ``--batches`` batches and reports tokens/s and the
share of a core it used (process CPU time, worker processes included, over wall time); the
parent samples the child's process tree for the peak RSS (``proctree``). Medians are
reported, with ratios measured in the same run.

Usage: ``flock /tmp/fastdata-bench.lock .venv/bin/python benchmarks/bench_tokens.py``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import proctree  # noqa: E402

VARIANTS = ("fastdata", "nanogpt", "torch")
DEFAULT_DIR = "/tmp/fastdata-bench-tokens"


def make_data(folder: Path, tokens: int, shards: int, seed: int = 0) -> Path:
    """Token shards (``tok-NNNNNN.tar`` + ``tok.index.json``) and ``train.bin``, made once."""
    from fastdata.shards.index import write_index
    from fastdata.shards.tokens import write_token_shard

    folder = folder / f"{tokens}-{shards}"
    if (folder / "tok.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries, flat = [], []
    per = tokens // shards
    for s in range(shards):
        lengths = np.maximum(1, rng.geometric(1 / 600, per // 300)).astype(np.int64)
        lengths = lengths[np.cumsum(lengths) <= per]
        lengths = np.append(lengths, per - lengths.sum()) if per > lengths.sum() else lengths
        docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tok = rng.integers(0, 50256, int(docs[-1]), dtype=np.uint16)
        tok[docs[1:] - 1] = 50256  # GPT-2's end-of-text
        entries.append(write_token_shard(str(folder / f"tok-{s:06d}.tar"), f"s{s:06d}", tok, docs))
        flat.append(tok)
    np.concatenate(flat).tofile(folder / "train.bin")
    write_index(str(folder / "tok.index.json"), {"shards": entries, "vocab_size": 50257, "eod": 50256})
    return folder


class RowDataset:
    """Map-style: item ``r`` is concat row ``r`` (inputs, targets) of the shards, as torch users write it."""

    def __init__(self, urls: list[str], counts: list[int], seq_len: int) -> None:
        self.urls, self.t = urls, seq_len
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self.rows = (int(self.starts[-1]) - 1) // seq_len
        self.shards: dict = {}

    def __len__(self) -> int:
        return self.rows

    def _tokens(self, s: int) -> np.ndarray:
        from fastdata.shards.tokens import open_token_shard

        if s not in self.shards:
            self.shards[s] = open_token_shard(self.urls[s]).tokens
        return self.shards[s]

    def __getitem__(self, r: int):
        import torch

        lo, hi = r * self.t, r * self.t + self.t + 1
        parts, s = [], int(np.searchsorted(self.starts, lo, side="right")) - 1
        while lo < hi:
            end = min(hi, int(self.starts[s + 1]))
            parts.append(self._tokens(s)[lo - self.starts[s] : end - self.starts[s]])
            lo, s = end, s + 1
        row = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        return row[:-1], row[1:]


def nanogpt_batches(path: Path, batch: int, seq_len: int, seed: int = 0):
    """nanoGPT's ``get_batch`` over ``train.bin``, batch after batch (our own writing)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    while True:
        data = np.memmap(path, dtype=np.uint16, mode="r")  # mapped again per batch, as nanoGPT does
        ix = torch.randint(len(data) - seq_len, (batch,), generator=gen)
        x = torch.stack([torch.from_numpy(data[i : i + seq_len].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + seq_len].astype(np.int64)) for i in ix])
        yield x, y


def batches(variant: str, folder: Path, batch: int, seq_len: int, workers: int):
    """An endless iterator of ``(inputs, targets)`` for ``variant``."""
    import torch

    urls = sorted(str(p) for p in folder.glob("tok-*.tar"))
    if variant == "nanogpt":
        yield from nanogpt_batches(folder / "train.bin", batch, seq_len)
    elif variant == "fastdata":
        import fastdata

        ds = fastdata.TokenDataset(urls, seq_len, mode="concat", shuffle=True)
        loader = fastdata.DataLoader(ds, batch_size=batch, num_workers=workers)
        while True:
            for b in loader:
                yield b["input_ids"], b["targets"]
    else:
        index = json.loads((folder / "tok.index.json").read_text())
        ds = RowDataset(urls, [s["tokens"] for s in index["shards"]], seq_len)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                             drop_last=True, persistent_workers=workers > 0)  # fmt: skip
        while True:
            yield from loader


def child(variant: str, folder: Path, batch: int, seq_len: int, n: int, workers: int) -> dict:
    """Times ``n`` batches after a warm-up; prints and returns the result (one JSON line)."""
    it = batches(variant, folder, batch, seq_len, workers)
    for _ in range(3):
        x, y = next(it)
    before, wall = _cpu(), time.perf_counter()
    check = 0
    for _ in range(n):
        x, y = next(it)
        check += int(x[0, 0])
    seconds = time.perf_counter() - wall
    cpu = _cpu() - before  # worker processes count while they run: see _cpu
    result = {"variant": variant, "tokens": n * batch * seq_len, "seconds": seconds,
              "rate": n * batch * seq_len / seconds, "core": cpu / seconds, "shape": list(x.shape),
              "dtype": str(x.dtype)}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def _cpu() -> float:
    """CPU seconds of this process and its live child processes (the DataLoader's workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for c in me.children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def run(folder: Path, reps: int, batch: int, seq_len: int, n: int, workers: int) -> dict[str, list[dict]]:
    """Alternating child runs; returns the results per variant."""
    for path in folder.iterdir():  # the page cache holds the data for every variant alike
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rep in range(reps):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, "--dir", str(folder), "--batch", str(batch),
                   "--seq-len", str(seq_len), "--batches", str(n), "--workers", str(workers)]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
            peak_rss, _ = proctree.watch(proc)
            out = proc.stdout.read()
            if proc.returncode != 0:
                raise RuntimeError(f"{variant} failed (exit {proc.returncode})")
            result = json.loads(out.strip().splitlines()[-1])
            result["rss"] = peak_rss
            results[variant].append(result)
            print(f"rep {rep} {variant}: {result['rate'] / 1e6:.1f} M tokens/s, {result['core']:.2f} cores, "
                  f"{peak_rss / 2**20:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
    return results


def table(results: dict[str, list[dict]]) -> str:
    """The Markdown table of medians, with ratios against nanoGPT and torch."""
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("rate", "core", "rss")} for v, rs in results.items()}
    names = {"fastdata": "fastdata TokenDataset (concat, shuffle)", "nanogpt": "nanoGPT get_batch",
             "torch": "torch DataLoader over the shards"}  # fmt: skip
    lines = ["| loader | M tokens/s | vs nanoGPT | vs torch | cores used | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for v in VARIANTS:
        m = med[v]
        lines.append(f"| {names[v]} | {m['rate'] / 1e6:.1f} | {m['rate'] / med['nanogpt']['rate']:.2f}x | "
                     f"{m['rate'] / med['torch']['rate']:.2f}x | {m['core']:.2f} | {m['rss'] / 2**20:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=DEFAULT_DIR, help="scratch folder for the data (git-ignored /tmp)")
    p.add_argument("--tokens", type=int, default=50_000_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batches", type=int, default=300, help="timed batches per run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, Path(args.dir), args.batch, args.seq_len, args.batches, args.workers)
        return 0
    folder = make_data(Path(args.dir), args.tokens, args.shards)
    results = run(folder, args.reps, args.batch, args.seq_len, args.batches, args.workers)
    print(f"{args.tokens / 1e6:.0f}M tokens in {args.shards} shards, B={args.batch}, T={args.seq_len}, "
          f"{args.workers} workers, median of {args.reps} runs of {args.batches} batches\n")  # fmt: skip
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
