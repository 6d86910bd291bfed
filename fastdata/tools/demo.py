"""``fastdata demo``: the whole library on an embedded dataset, in a few minutes on a CPU.

With no network and no arguments it
1. builds a small but real image dataset from the photographs shipped inside scikit-image
   and scikit-learn (``fastdata.tools.sample_data``: random crops, scales and flips, labelled by
   source photograph, JPEGs of ImageNet-like sizes), as train and validation folders;
2. converts both to shards (``fastdata.convert.command``) and verifies them;
3. pictures them: dataset statistics and a contact sheet after the training transforms;
4. benchmarks fastdata against torch's DataLoader on the same images (``fastdata.tools.bench``);
5. trains resnet18 from the shards with the fastdata loader and evaluates it;
6. the text part (``fastdata.tools.text_demo``): a corpus of Python reference passages and
   library docstrings, tokenized into token shards, a small GPT pretrained on them and
   fine-tuned as a classifier of the documents' library;
7. writes a report folder: ``REPORT.md`` plus the PNGs, JSON and tables behind it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fastdata.convert.command import ConvertOptions, convert, format_report
from fastdata.shards.index import read_index
from fastdata.shards.verify import verify

CROP = 64  # training crop side: resnet18 trains at about 10-20 samples/s at this size on 2 CPU cores


def _log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def build_data(out: Path, per_class: int, val_per_class: int, seed: int) -> dict[str, Any]:
    """Steps 1-2: the image folders, their shards and the verification."""
    from fastdata.tools.sample_data import make_splits

    photos = out / "data" / "photos"
    if not (photos / "val").is_dir():
        make_splits(photos, {"train": per_class, "val": val_per_class}, seed=seed)
    result: dict[str, Any] = {"photos": str(photos)}
    for split in ("train", "val"):
        pattern = str(out / "data" / "shards" / f"{split}-%06d.tar")
        report = convert(str(photos / split), pattern, ConvertOptions(maxcount=200, workers=2, shuffle_seed=seed))
        problems, checked = verify(report.index_path)
        if problems:
            raise RuntimeError("verify found problems: " + "; ".join(map(str, problems[:5])))
        _log(format_report(report).splitlines()[0] + f"; verified {checked} samples")
        result[split] = {"index": report.index_path, "samples": report.written, "shards": len(report.shards),
                         "bytes": report.bytes, "seconds": report.seconds}
    return result


def transforms_for(index: dict, train: bool):
    """The fastdata pipelines of the demo: augmentation for training, centre crop for validation."""
    from fastdata import transforms as T

    mean, std = index["stats"]["mean"], index["stats"]["std"]
    geometry = [T.RandomResizedCrop(CROP, scale=(0.25, 1.0)), T.RandomHorizontalFlip()] if train else [
        T.Resize(CROP * 8 // 7), T.CenterCrop(CROP)]
    return T.Compose([*geometry, T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def shard_loader(index_path: str, train: bool, batch_size: int, seed: int):
    """A fastdata loader over the shards of an index."""
    from fastdata.loading.dataloader import DataLoader
    from fastdata.loading.shard_dataset import ShardDataset
    from fastdata.shards.index import shard_urls

    index = read_index(index_path)
    dataset = ShardDataset(shard_urls(index_path, index), transform=transforms_for(index, train),
                           shuffle=train, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, num_workers=2)


def pictures(data: dict, out: Path) -> dict[str, str]:
    """Step 3: statistics plot and contact sheet."""
    from fastdata.pictures.gallery import class_names, compute_stats
    from fastdata.pictures.plots import contact_sheet, plot_stats
    from fastdata.shards.index import shard_urls

    index = read_index(data["train"]["index"])
    urls = shard_urls(data["train"]["index"], index)
    names = class_names(index)
    stats = compute_stats(urls, limit=1000)
    stats["class_counts"] = {names[k]: v for k, v in stats["class_counts"].items()}
    paths = {"stats": str(out / "stats.png"), "samples": str(out / "samples.png")}
    plot_stats(stats, paths["stats"], title=f"Training set: statistics of {stats['images']} images")
    images, labels = next(iter(shard_loader(data["train"]["index"], True, 32, seed=1)))
    contact_sheet(images, [f"sample {i}" for i in range(len(labels))], labels.tolist(), paths["samples"],
                  mean=index["stats"]["mean"], std=index["stats"]["std"], class_names=names,
                  title=f"What the model sees: RandomResizedCrop({CROP}) + flip, after the loader")
    return paths


def benchmark(data: dict, out: Path, repeats: int) -> dict[str, Any]:
    """Step 4: torch's DataLoader against fastdata on the same training images."""
    from fastdata.tools.bench import conditions, measure, write_outputs
    from fastdata.tools.workloads import imagenet_candidates

    candidates = imagenet_candidates(data["photos"] + "/train", data["train"]["index"], batch_size=64, workers=2)
    results = measure(candidates, repeats=repeats, workload="ImageNet-like JPEG, RandomResizedCrop 224",
                      log=_log)
    declared = conditions(page_cache="warm", output="float32 NCHW normalised", device="cpu", batch_size=64,
                          workers=2)
    paths = write_outputs(results, str(out / "bench"), declared)
    return {"results": [r.__dict__ for r in results], "paths": paths}


def train(data: dict, out: Path, epochs: int, seed: int) -> dict[str, Any]:
    """Step 5: resnet18 from scratch on the shards, evaluated on the validation shards."""
    from fastdata.train.loop import fit, write_report
    from fastdata.train.models import build_model

    index = read_index(data["train"]["index"])
    names = [n for n, _ in sorted(index["label_map"].items(), key=lambda kv: kv[1])]
    model = build_model("resnet18", num_classes=len(names))
    result = fit(model, shard_loader(data["train"]["index"], True, 32, seed),
                 val_loader=shard_loader(data["val"]["index"], False, 100, seed), epochs=epochs,
                 lr=0.05, optimizer="sgd", weight_decay=5e-4, seed=seed, device="cpu",
                 checkpoint_dir=out / "checkpoints", progress=sys.stderr.isatty())
    paths = write_report(result, names, out / "training")
    return {"history": result.history, "paths": paths, "samples_per_sec": result.samples_per_sec,
            "data_wait_share": result.data_wait_share, "chance": 1 / len(names),
            "report": result.report.to_dict(names) if result.report else None}


def write_summary(out: Path, images: dict | None, text: dict | None, seconds: float) -> str:
    """Step 7: ``REPORT.md`` (and ``summary.json``) of the parts that ran."""
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    lines = [
        "# fastdata demo report", "",
        f"Made in {seconds / 60:.1f} minutes on {os.cpu_count()} CPU cores, torch {torch.__version__}.", "",
    ]  # fmt: skip
    summary: dict[str, Any] = {}
    if images is not None:
        lines += _image_section(images, rel)
        summary.update({"data": images["data"], "bench": images["bench"]["results"],
                        "training": images["trained"]["history"]})  # fmt: skip
    if text is not None:
        from fastdata.tools.text_demo import text_section

        lines += text_section(text, rel)
        summary["text"] = text
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return str(path)


def _image_section(images: dict, rel) -> list[str]:
    from fastdata.tools.bench import Result, markdown_table

    data, pics, bench, trained = images["data"], images["pics"], images["bench"], images["trained"]
    last = trained["history"][-1]
    return [
        "## Data", "",
        f"{data['train']['samples']} training and {data['val']['samples']} validation JPEGs of ImageNet-like "
        "sizes, made from the photographs shipped inside scikit-image and scikit-learn (one class per "
        f"photograph), converted to {data['train']['shards']} + {data['val']['shards']} shards and verified.", "",
        f"![statistics]({rel(pics['stats'])})", "", f"![samples]({rel(pics['samples'])})", "",
        "## Throughput", "", markdown_table([Result(**r) for r in bench["results"]]), "",
        f"![throughput]({rel(bench['paths']['png'])})", "",
        "## Training", "",
        f"resnet18 from scratch, {len(trained['history'])} epochs of {CROP}-pixel crops: validation accuracy "
        f"**{last['val_accuracy']:.1%}** (chance {trained['chance']:.0%}), macro F1 {last['val_macro_f1']:.3f}; "
        f"{trained['samples_per_sec']:.0f} training samples/s with {trained['data_wait_share']:.1%} of the "
        "time waiting for data.", "",
        f"![training]({rel(trained['paths']['training_png'])})", "",
        f"![confusion]({rel(trained['paths']['confusion_png'])})", "",
    ]


def run_demo(out: str = "demo-report", *, per_class: int = 100, val_per_class: int = 30, epochs: int = 2,
             repeats: int = 3, seed: int = 0, images: bool = True, text=None) -> str:
    """Runs every step; returns the path of ``REPORT.md``.

    Args:
        images: run the image part (steps 1-5).
        text: a ``fastdata.tools.text_demo.TextBudget`` to run the text part (step 6) with,
            or None to leave it out.
    """
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    image_part = None
    if images:
        _log("1-2. building the dataset, converting and verifying shards")
        data = build_data(root, per_class, val_per_class, seed)
        _log("3. pictures")
        pics = pictures(data, root)
        _log("4. throughput benchmark")
        bench = benchmark(data, root, repeats)
        _log("5. training resnet18")
        trained = train(data, root, epochs, seed)
        image_part = {"data": data, "pics": pics, "bench": bench, "trained": trained}
    text_part = None
    if text is not None:
        from fastdata.tools.text_demo import run_text_demo

        _log("6. the language model")
        text_part = run_text_demo(root, text, seed=seed, log=_log)
    return write_summary(root, image_part, text_part, time.perf_counter() - start)


def register(subparsers) -> None:
    """Adds ``fastdata demo``."""
    p = subparsers.add_parser("demo", help="build a real dataset, convert, verify, benchmark, train; write a report")
    p.add_argument("--out", default="demo-report", help="report folder (default demo-report)")
    p.add_argument("--per-class", type=int, default=100, help="training images per class (10 classes)")
    p.add_argument("--val-per-class", type=int, default=30, help="validation images per class")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of each benchmark candidate")
    p.add_argument("--seed", type=int, default=0)
    parts = p.add_mutually_exclusive_group()
    parts.add_argument("--no-text", action="store_true", help="leave out the language-model part")
    parts.add_argument("--text-only", action="store_true", help="run only the language-model part")
    p.add_argument("--full-text", action="store_true",
                   help="train the language model longer (about 10-15 minutes on 2 CPU cores, not 3)")  # fmt: skip
    p.set_defaults(func=run)


def run(args) -> int:
    """Runs ``fastdata demo``."""
    from fastdata.tools.text_demo import FULL, TextBudget

    text = None if args.no_text else (FULL if args.full_text else TextBudget())
    path = run_demo(args.out, per_class=args.per_class, val_per_class=args.val_per_class, epochs=args.epochs,
                    repeats=args.repeats, seed=args.seed, images=not args.text_only, text=text)
    print(f"report: {os.path.abspath(path)}")
    return 0
