"""Feeding batches to a model: the device, the memory format, uint8 conversion, autocast.

A ``Feed`` is what the trainer and the evaluator share: it takes the next ``(images,
labels)`` batch from any iterator, times how long that took (the data wait), moves it to the
device with a non-blocking copy, converts uint8 images to normalised float32 there (after
the transfer: four times fewer bytes cross the bus than with float32), and optionally makes
them channels-last. Dict batches (the token batches of ``fastdata.TokenDataset``) move to
the device tensor by tensor, unchanged; ``model_inputs`` picks what a model reads from them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence

import torch

from fastdata.errors import FastdataError

# Keys of a token batch that a model reads (as keyword arguments); the others (targets,
# labels, cu_seqlens) belong to the loss.
MODEL_INPUTS = ("input_ids", "position_ids", "segment_ids", "attention_mask", "lengths")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Returns ``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_model_input(
    images: torch.Tensor,
    device: torch.device,
    channels_last: bool = False,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> torch.Tensor:
    """Moves a batch of images to ``device``; uint8 batches become normalised float32 there.

    Args:
        images: ``(N, C, H, W)`` float or uint8, or ``(N, H, W, C)`` uint8 with 1 or 3
            channels.
        device: the target device.
        channels_last: return the channels-last memory format.
        normalize: ``(mean, std)`` per channel, applied to uint8 images after scaling them
            to [0, 1]; float images are returned as they are.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW (a view)
        images = images.float().div_(255)
        if normalize is not None:
            mean = torch.tensor(normalize[0], device=device).view(1, -1, 1, 1)
            std = torch.tensor(normalize[1], device=device).view(1, -1, 1, 1)
            images = images.sub_(mean).div_(std)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


class Feed:
    """How batches reach the model.

    Args:
        device: default CUDA if available, else CPU.
        amp: autocast (bfloat16, or float16 where bfloat16 is unsupported); default on for
            CUDA.
        channels_last: channels-last images; default on for CUDA.
        normalize: ``(mean, std)`` for uint8 images (see ``to_model_input``).
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        *,
        amp: bool | None = None,
        channels_last: bool | None = None,
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if amp is None else amp
        self.channels_last = cuda if channels_last is None else channels_last
        self.normalize = normalize
        self.amp_dtype = torch.bfloat16
        if cuda and not torch.cuda.is_bf16_supported():
            self.amp_dtype = torch.float16

    @property
    def needs_grad_scaler(self) -> bool:
        """True when autocast runs in float16, whose gradients need loss scaling."""
        return self.amp and self.amp_dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the forward pass (a no-op without AMP)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def next(self, batches: Iterator) -> tuple[tuple | dict | None, float]:
        """Returns the next batch on the device (None at the end) and the seconds spent
        waiting for it: ``(images, labels)``, or a dict of tensors for a dict batch.
        """
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return None, time.perf_counter() - start
        if isinstance(batch, Mapping):
            moved = {k: torch.as_tensor(v).to(self.device, non_blocking=True)
                     for k, v in batch.items()}  # fmt: skip
            return moved, time.perf_counter() - start
        if not isinstance(batch, list | tuple) or len(batch) < 2:
            raise FastdataError(
                f"a batch must be an (images, labels) pair or a dict of tensors, got"
                f" {type(batch).__name__}; make the loader yield tuples (e.g. to_tuple('jpg',"
                " 'cls'))"
            )
        images, labels = batch[:2]
        labels = torch.as_tensor(labels).to(self.device, non_blocking=True).long()
        images = to_model_input(images, self.device, self.channels_last, self.normalize)
        return (images, labels), time.perf_counter() - start


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a token batch that a model reads (``MODEL_INPUTS``)."""
    if "input_ids" not in batch:
        raise FastdataError(
            f"a dict batch needs 'input_ids' (a token batch), got keys {sorted(batch)}"
        )
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def classification_pair(batch: tuple | Mapping) -> tuple[object, torch.Tensor]:
    """Splits a batch on the device into what the model reads and the class labels:
    ``(images, labels)`` stays as it is; a token batch gives ``(model_inputs, labels)``."""
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise FastdataError(
                f"a batch must be an (images, labels) pair, got dict without 'input_ids' (keys"
                f" {sorted(batch)}); make the loader yield tuples (e.g. to_tuple('jpg', 'cls'))"
                " or token batches (fastdata.TokenDataset)"
            )
        if "labels" not in batch:
            raise FastdataError(
                "a classification batch needs 'labels'; read the tokens with"
                " TokenDataset(mode='padded') over shards converted with a label column"
            )
        return model_inputs(batch), batch["labels"].long()
    return batch[0], batch[1]


def call(model: torch.nn.Module, inputs: object) -> torch.Tensor:
    """Calls ``model`` on images, or on a dict of token inputs as keyword arguments."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
