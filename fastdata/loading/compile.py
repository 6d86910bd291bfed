"""Recognises what ``DataLoader(..., compile=True)`` can run on the compiled path.

``compile_folder(dataset, collate_fn=...)`` looks at a dataset and the
loader's batching and returns either a ``CompiledFolder`` (the compiled transform plan plus
what is needed to turn indices into ``SampleRef``) or the list of the pieces it could not
compile, by name, for the loader's fallback warning.

Compilable today: torchvision's ``ImageFolder`` / ``DatasetFolder`` (or a subclass that does
not override ``__getitem__``) reading images with torchvision's default loader, with a
``transform`` that ``fastdata.transforms.from_torchvision`` translates completely (v1 and
v2 transforms), any ``target_transform`` (it runs on the labels in the main thread), the
default ``collate_fn``. (The loader itself also requires automatic batching.) Everything else
is run as it is by the drop-in loader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import default_collate

from fastdata.loading.engine import Plan, SampleRef

__all__ = ["CompiledFolder", "compile_folder"]


@dataclass
class CompiledFolder:
    """An image folder dataset turned into a compiled plan and its samples.

    Attributes:
        plan: the compiled transform plan the engine runs.
        samples: the dataset's ``(path, class_index)`` list (the dataset's own object).
        target_transform: the dataset's ``target_transform`` or None.
        transforms: the names of the compiled transforms, for ``repr`` and logs.
        batch_stage: the plan has a batch-level stage and most files are PNGs, which it
            decodes (NOTE [ Batch-level stage ] in ``fastdata.loading.engine``): worker threads
            then beat worker processes (NOTE [ Threads, not processes ]).
    """

    plan: Plan
    samples: Sequence[tuple[str, int]]
    target_transform: Callable[[Any], Any] | None
    transforms: list[str]
    batch_stage: bool = False

    def refs(
        self, index_batches: Iterator[Sequence[int]], start: int = 0
    ) -> Iterator[list[SampleRef]]:
        """Turns batches of dataset indices into batches of ``SampleRef``.

        Each sample's randomness index is its position in the epoch (0, 1, 2, ...), so a
        sample drawn twice by a sampler with replacement still gets two augmentations;
        ``start`` is the position of the first sample (a resumed epoch).
        """
        position = start
        samples, target_transform = self.samples, self.target_transform
        for indices in index_batches:
            batch = []
            for i in indices:
                path, target = samples[i]
                if target_transform is not None:
                    target = target_transform(target)
                batch.append(SampleRef(path, position, target, url=str(path)))
                position += 1
            yield batch


def compile_folder(
    dataset: Any, *, collate_fn: Callable | None
) -> tuple[CompiledFolder | None, list[str]]:
    """Compiles ``dataset`` for the fast path, or says what prevents it.

    Args:
        dataset: the loader's dataset.
        collate_fn: the loader's collate function (after torch's defaulting).

    Returns:
        ``(compiled, [])`` on success, ``(None, reasons)`` otherwise; each reason names a
        piece that could not be compiled, such as ``"transforms.ColorJitter"``.
    """
    reasons = _dataset_reasons(dataset)
    if collate_fn is not default_collate:
        reasons.append(f"collate_fn={getattr(collate_fn, '__name__', collate_fn)!r}")
    if reasons:
        return None, reasons
    from fastdata.transforms import PlanError, from_torchvision

    pipeline, unsupported = from_torchvision(dataset.transform)
    if unsupported:
        return None, [str(name) for name in unsupported]
    try:
        plan = pipeline.plan()
        plan.sample_shape  # noqa: B018 (raises when the output size is not fixed)
    except PlanError as exc:
        return None, [f"the pipeline as a whole: {exc}"]
    names = [type(t).__name__ for t in getattr(pipeline, "transforms", [pipeline])]
    staged = getattr(plan, "has_batch_stage", False) and _mostly_png(dataset.samples)
    return CompiledFolder(plan, dataset.samples, dataset.target_transform, names, staged), []


def _mostly_png(samples: Sequence[tuple[str, int]]) -> bool:
    """Whether most of the folder's files have a ``.png`` extension (a sample of 1,000)."""
    step = max(1, len(samples) // 1000)
    names = [str(samples[i][0]).lower() for i in range(0, len(samples), step)]
    return 2 * sum(name.endswith(".png") for name in names) > len(names)


def _dataset_reasons(dataset: Any) -> list[str]:
    """Why ``dataset`` is not a compilable torchvision image folder (empty: it is)."""
    try:
        from torchvision.datasets import DatasetFolder
        from torchvision.datasets.folder import default_loader, pil_loader
    except ImportError:  # torchvision is optional for the drop-in loader
        return ["torchvision is not installed"]
    name = type(dataset).__name__
    if not isinstance(dataset, DatasetFolder):
        return [f"dataset {name} (only torchvision ImageFolder/DatasetFolder compile)"]
    if type(dataset).__getitem__ is not DatasetFolder.__getitem__:
        return [f"{name}.__getitem__ (overridden)"]
    reasons = []
    if dataset.loader not in (default_loader, pil_loader):
        loader = getattr(dataset.loader, "__name__", repr(dataset.loader))
        reasons.append(f"loader={loader} (only the default PIL loader compiles)")
    if dataset.transform is None:
        reasons.append("transform=None (the samples are PIL images, not tensors)")
    return reasons
