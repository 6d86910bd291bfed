"""Recognises what ``DataLoader(..., compile=True)`` can run on the compiled path.

``compile_folder(dataset, collate_fn=...)`` looks at a dataset and the loader's batching
and returns either a ``CompiledFolder`` (the compiled transform plan plus what is needed
to turn indices into ``SampleRef``) or every reason it could not compile, each naming the
piece and what to change, for the loader's fallback warning.

Compilable (README, "What compile=True covers"):
- datasets: torchvision's ``ImageFolder`` / ``DatasetFolder`` (or a subclass that does not
  override ``__getitem__``) reading images with torchvision's default loader, and
  ``Subset`` / ``ConcatDataset`` of them (the parts of a ``ConcatDataset`` must share one
  transform); any ``target_transform`` (it runs on the labels in the main thread);
- transforms: whatever ``fastdata.transforms.from_torchvision`` translates completely (v1
  and v2): resizes and crops, flips, ColorJitter(brightness), the AutoAugment family
  (TrivialAugmentWide, RandAugment, AutoAugment, AugMix; nearest or bilinear interpolation), ToTensor /
  ToDtype, Normalize, RandomErasing, and the ``ImageClassification`` eval preset that
  ``weights.transforms()`` returns;
- ``collate_fn``: torch's ``default_collate``, or a function whose whole body is
  ``return mix(*default_collate(batch))`` where ``mix`` is a torchvision v2 ``MixUp``,
  ``CutMix`` or ``RandomChoice`` of them (NOTE [ Recognising the mixing collate ]).
(The loader itself also requires automatic batching.) Everything else is run as it is by
the drop-in loader.
"""

from __future__ import annotations

import bisect
import dis
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import ConcatDataset, Subset, default_collate

from fastdata.loading.engine import Plan, SampleRef

__all__ = ["CompiledFolder", "compile_folder"]

_SUPPORTED = "see the README, 'What compile=True covers'"


@dataclass
class CompiledFolder:
    """An image folder dataset turned into a compiled plan and its samples.

    Attributes:
        plan: the compiled transform plan the engine runs.
        samples: ``(path, class_index, target_transform)`` of every sample, in the
            dataset's index order (a view of the folders' own lists).
        transforms: the names of the compiled transforms, for ``repr`` and logs.
        batch_stage: the plan has a batch-level stage and most files are PNGs, which it
            decodes (NOTE [ Batch-level stage ] in ``fastdata.loading.engine``): worker threads
            then beat worker processes (NOTE [ Threads, not processes ]).
        mix: the MixUp/CutMix step of the collate function, or None.
    """

    plan: Plan
    samples: Sequence[tuple[str, int, Callable | None]]
    transforms: list[str]
    batch_stage: bool = False
    mix: Any = None

    def refs(
        self, index_batches: Iterator[Sequence[int]], start: int = 0
    ) -> Iterator[list[SampleRef]]:
        """Turns batches of dataset indices into batches of ``SampleRef``.

        Each sample's randomness index is its position in the epoch (0, 1, 2, ...), so a
        sample drawn twice by a sampler with replacement still gets two augmentations;
        ``start`` is the position of the first sample (a resumed epoch).
        """
        position = start
        samples = self.samples
        for indices in index_batches:
            batch = []
            for i in indices:
                path, target, target_transform = samples[i]
                if target_transform is not None:
                    target = target_transform(target)
                batch.append(SampleRef(path, position, target, url=str(path)))
                position += 1
            yield batch

    def describe(self) -> str:
        """What was compiled, in one line (the loader's ``repr``)."""
        names = [n for n in self.transforms if n != "DecodeImage"]
        if self.mix is not None:
            names.append(" or ".join(type(c).__name__ for c in self.mix.choices) + " (collate_fn)")
        return ", ".join(names)


class _FolderSamples(Sequence):
    """``(path, class_index, target_transform)`` of one folder dataset."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, i):
        path, target = self.folder.samples[i]
        return path, target, self.folder.target_transform


class _SubsetSamples(Sequence):
    def __init__(self, samples: Sequence, indices: Sequence[int]) -> None:
        self.samples, self.indices = samples, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.samples[self.indices[i]]


class _ConcatSamples(Sequence):
    def __init__(self, parts: list[Sequence], cumulative_sizes: list[int]) -> None:
        self.parts, self.cumulative = parts, cumulative_sizes

    def __len__(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def __getitem__(self, i):
        if i < 0:
            i += len(self)
        part = bisect.bisect_right(self.cumulative, i)
        return self.parts[part][i - (self.cumulative[part - 1] if part else 0)]


def compile_folder(
    dataset: Any, *, collate_fn: Callable | None
) -> tuple[CompiledFolder | None, list[str]]:
    """Compiles ``dataset`` for the fast path, or says everything that prevents it.

    Args:
        dataset: the loader's dataset.
        collate_fn: the loader's collate function (after torch's defaulting).

    Returns:
        ``(compiled, [])`` on success, ``(None, reasons)`` otherwise; each reason names a
        piece that could not be compiled, such as ``"transforms.ColorJitter"``, and what to
        change.
    """
    folders, reasons = [], []
    samples = _samples(dataset, folders, reasons)
    mix, collate_reason = _collate(collate_fn)
    if collate_reason:
        reasons.append(collate_reason)
    compiled_plan, names = None, []
    transforms = {id(f.transform): f.transform for f in folders if f.transform is not None}
    if len(transforms) > 1:
        reasons.append(
            "the folders of the ConcatDataset have different transforms (give them one "
            "transform object, or use one loader per folder)"
        )
    elif transforms:
        compiled_plan, names, more = _plan(next(iter(transforms.values())))
        reasons.extend(more)
    if reasons:
        return None, reasons
    staged = getattr(compiled_plan, "has_batch_stage", False) and _mostly_png(samples)
    return CompiledFolder(compiled_plan, samples, names, staged, mix), []


def _plan(transform: Any) -> tuple[Any, list[str], list[str]]:
    """``(plan, names, reasons)`` for a dataset's transform."""
    from fastdata.transforms import PlanError, from_torchvision

    pipeline, unsupported = from_torchvision(transform)
    if unsupported:
        return None, [], [
            f"transform {name} (remove it or replace it with a compiled transform; {_SUPPORTED})"
            for name in unsupported
        ]
    try:
        plan = pipeline.plan()
        plan.sample_shape  # noqa: B018 (raises when the output size is not fixed)
    except PlanError as exc:
        return None, [], [f"the pipeline as a whole: {exc}"]
    names = [type(t).__name__ for t in getattr(pipeline, "transforms", [pipeline])]
    return plan, names, []


def _mostly_png(samples: Sequence[tuple]) -> bool:
    """Whether most of the folder's files have a ``.png`` extension (a sample of 1,000)."""
    step = max(1, len(samples) // 1000)
    names = [str(samples[i][0]).lower() for i in range(0, len(samples), step)]
    return 2 * sum(name.endswith(".png") for name in names) > len(names)


def _samples(dataset: Any, folders: list, reasons: list[str]) -> Sequence | None:
    """The dataset's samples as a sequence (None when it is not compilable, with the
    reasons appended); the folder datasets it reads are appended to ``folders``."""
    if type(dataset) is Subset or (
        isinstance(dataset, Subset) and type(dataset).__getitem__ is Subset.__getitem__
    ):
        inner = _samples(dataset.dataset, folders, reasons)
        return None if inner is None else _SubsetSamples(inner, dataset.indices)
    if isinstance(dataset, ConcatDataset) and type(dataset).__getitem__ is ConcatDataset.__getitem__:
        parts = [_samples(d, folders, reasons) for d in dataset.datasets]
        if any(p is None for p in parts):
            return None
        return _ConcatSamples(parts, list(dataset.cumulative_sizes))
    more = _folder_reasons(dataset)
    reasons.extend(more)
    if hasattr(dataset, "transform") and hasattr(dataset, "samples"):
        folders.append(dataset)  # its transform is checked too, so all reasons come at once
    return None if more else _FolderSamples(dataset)


def _folder_reasons(dataset: Any) -> list[str]:
    """Why ``dataset`` is not a compilable torchvision image folder (empty: it is)."""
    try:
        from torchvision.datasets import DatasetFolder
        from torchvision.datasets.folder import default_loader, pil_loader
    except ImportError:  # torchvision is optional for the drop-in loader
        return ["torchvision is not installed (pip install torchvision)"]
    name = type(dataset).__name__
    if not isinstance(dataset, DatasetFolder):
        return [
            f"dataset {name} (only torchvision ImageFolder/DatasetFolder, and Subset or "
            "ConcatDataset of them, compile; for other data convert it to shards with "
            "`fastdata convert` and read them with ShardDataset)"
        ]
    if type(dataset).__getitem__ is not DatasetFolder.__getitem__:
        return [f"{name}.__getitem__ (overridden: move the extra work into transform or target_transform)"]
    reasons = []
    if dataset.loader not in (default_loader, pil_loader):
        loader = getattr(dataset.loader, "__name__", repr(dataset.loader))
        reasons.append(f"loader={loader} (only the default PIL loader compiles: drop the loader argument)")
    if dataset.transform is None:
        reasons.append(
            "transform=None (the samples are PIL images, not tensors: give a transform that "
            "ends in ToTensor or ToDtype)"
        )
    return reasons


def _collate(collate_fn: Callable | None) -> tuple[Any, str | None]:
    """``(mix, reason)``: the compiled batch-mixing step of ``collate_fn`` (None for
    torch's default collation) or why ``collate_fn`` is not compiled."""
    if collate_fn is default_collate:
        return None, None
    name = getattr(collate_fn, "__name__", repr(collate_fn))
    target = _mixing_target(collate_fn)
    if target is None:
        return None, (
            f"collate_fn={name!r} (only torch's default_collate, or a function returning "
            "mix(*default_collate(batch)) with a torchvision v2 MixUp/CutMix/RandomChoice "
            "of them, compile; move other work into the training loop)"
        )
    try:
        return _batch_mix(target), None
    except ValueError as exc:
        return None, f"collate_fn={name!r}: {exc}"


_CALL_SHAPE = {"RESUME", "COPY_FREE_VARS", "LOAD_GLOBAL", "LOAD_DEREF", "LOAD_FAST", "PUSH_NULL",
               "PRECALL", "CALL", "CALL_FUNCTION", "CALL_FUNCTION_EX", "RETURN_VALUE", "NOP",
               "LOAD_FAST_LOAD_FAST", "LOAD_FAST_BORROW", "LOAD_ATTR"}  # fmt: skip


def _mixing_target(fn: Any) -> Any:
    """NOTE [ Recognising the mixing collate ]
    torchvision's recipe passes ``collate_fn=lambda batch: mix(*default_collate(batch))``
    (or the same as a nested ``def``), ``mix`` being a v2 ``MixUp``, ``CutMix`` or
    ``RandomChoice`` of them. Such a function is recognised by what it *is*, not by its
    name: one positional argument, bytecode made only of loads and calls, and exactly two
    names it loads from outside, torch's ``default_collate`` (also as a module's
    attribute, ``tud.default_collate``) and the mixing transform.
    Anything else (a function with more code, other callables) is not compiled. Returns
    the mixing transform, or None.
    """
    code = getattr(fn, "__code__", None)
    if code is None or code.co_argcount != 1 or inspect.isgeneratorfunction(fn):
        return None
    try:
        instructions = list(dis.get_instructions(fn))
        closure = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return None
    if any(i.opname not in _CALL_SHAPE for i in instructions):
        return None
    outside = {**closure.globals, **closure.nonlocals}
    values: list = []
    for i in instructions:
        if i.opname in ("LOAD_GLOBAL", "LOAD_DEREF"):
            values.append(outside.get(i.argval))
        elif i.opname == "LOAD_ATTR":  # ``tud.default_collate``: a module's attribute
            if not values or not inspect.ismodule(values[-1]):
                return None
            values[-1] = getattr(values[-1], i.argval, None)
    if len(values) != 2 or values[1] is not default_collate or not _is_mixing(values[0]):
        return None
    return values[0]


def _is_mixing(obj: Any) -> bool:
    name = type(obj).__name__
    if name == "RandomChoice":
        return all(type(t).__name__ in ("MixUp", "CutMix") for t in getattr(obj, "transforms", []))
    return name in ("MixUp", "CutMix") and type(obj).__module__.startswith("torchvision")


def _batch_mix(target: Any) -> Any:
    """The fastdata ``BatchMix`` equivalent to a torchvision MixUp/CutMix/RandomChoice."""
    from fastdata.transforms.mix import BatchMix, CutMix, MixUp

    steps = list(target.transforms) if type(target).__name__ == "RandomChoice" else [target]
    p = getattr(target, "p", None) if len(steps) > 1 else None
    classes = {getattr(s, "num_classes", None) for s in steps}
    if len(classes) != 1 or None in classes:
        raise ValueError("give every MixUp/CutMix the same num_classes (labels are class indices)")
    getters = {getattr(getattr(s, "_labels_getter", None), "__name__", None) for s in steps}
    if getters != {"_find_labels_default_heuristic"}:
        raise ValueError("only the default labels_getter compiles (drop the labels_getter argument)")
    made = [(CutMix if type(s).__name__ == "CutMix" else MixUp)(s.alpha) for s in steps]
    return BatchMix(made, classes.pop(), p)
