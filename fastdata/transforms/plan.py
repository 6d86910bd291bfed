"""The compiled plan of a pipeline: a per-sample uint8 stage and a batch stage.

``plan = Compose([...]).plan()`` (or :func:`compile_pipeline`) splits a pipeline in two:

- **sample stage** (``plan.sample_into(src, out, rng)``): decode (with DCT scaling when
  the resize shrinks 2x or more), crop, resize, pad, flip and brightness, fused into one
  resampling pass that writes an ``(H, W, C)`` uint8 slot the caller owns. The decoder and
  the Numba kernels release the GIL, so threads filling different slots scale; the only
  GIL-holding part is a few microseconds of parameter drawing and table setup.
  ``plan.sample_shape`` declares ``(H, W, C)`` before any data is seen.
- **batch stage** (``plan.finish(batch)``): ``ToDtype`` and ``Normalize`` fused into one
  table-driven pass from the uint8 NHWC batch to float NCHW (or channels-last) on the
  batch's device; :func:`~fastdata.transforms.kernels.select_backend` picks Numba on the
  CPU and torch ops elsewhere.

The randomness of a sample comes only from the ``rng`` passed to ``sample_into``: the
transforms draw from it in pipeline order, before decoding, so the same generator state
gives the same crops and flips whatever the decoder or backend.

NOTE [ Stage order ]
Batch-stage steps (ToDtype, Normalize) are applied after every sample-stage step even
where the pipeline lists a geometric step after them (torchvision v1 pipelines often put
``ToTensor`` first). Resampling in uint8 and converting afterwards differs from
resampling in float by the uint8 rounding only (at most 0.5/255).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np
import torch

from fastdata.decode import roi
from fastdata.decode.images import decode_image, image_format, image_size
from fastdata.errors import DecodeError
from fastdata.transforms.geometry import PAD_MODES, Geometry, PlanError
from fastdata.transforms.kernels import cpu, normalize_lut, select_backend

CHANNELS = 3
_SCRATCH = threading.local()  # the pixel stage's scratch slot of each thread

# NOTE [ Transforms declare, the plan runs them ]
# The plan reads the steps of a pipeline through what they declare (``stage``, ``declare``,
# ``apply`` and their parameters) and the names of their classes, and never imports
# :mod:`fastdata.transforms.ops`: the ops module sits above the plan (a single step called on
# a sample runs through the plan), so the two do not import each other.
_FLIP_AXES = {"RandomVerticalFlip": 0, "RandomHorizontalFlip": 1}


class Step(Protocol):
    """What the plan needs of a transform (:class:`fastdata.transforms.ops.Transform`)."""

    stage: str  # "decode", "sample" or "batch"

    def declare(self, size: tuple[int, int] | None) -> tuple[int, int] | None: ...

    def apply(self, geom: Geometry, rng: np.random.Generator) -> None: ...


def _is(step: Step, name: str) -> bool:
    """Whether ``step`` is the transform class ``name`` (one of :mod:`.ops`)."""
    return type(step).__name__ == name


def _as_hwc(src) -> np.ndarray:
    """An HWC uint8 RGB view of an array or a CHW tensor (gray replicated, alpha dropped)."""
    if isinstance(src, torch.Tensor):
        if src.dim() == 2:
            src = src[None]
        if src.dim() != 3:
            raise ValueError(f"expected a CHW uint8 tensor, got shape {tuple(src.shape)}")
        src = src.cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(src)
    if arr.dtype != np.uint8:
        raise TypeError(f"compiled transforms take uint8 images, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HWC image with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[:, :, :3]


def _axis_table(size: int, lo, length, n_resized, rows, kind, antialias):
    n = len(rows)
    starts, counts = np.empty(n, np.int32), np.empty(n, np.int32)
    weights = np.zeros((n, cpu.max_taps(length, n_resized, kind, antialias)), np.float32)
    cpu.axis_tables(size, lo, length, n_resized, rows, kind, antialias, starts, counts, weights)
    return starts, counts, weights


def _check_out(out: np.ndarray, size: tuple[int, int]) -> None:
    if out.dtype != np.uint8 or out.shape != (*size, CHANNELS) or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous uint8 {(*size, CHANNELS)} array, got {out.dtype} {out.shape}"
        )


def default_rng() -> np.random.Generator:
    """A generator seeded from torch's global RNG (so ``torch.manual_seed`` and worker seeding apply)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


class Plan:
    """A pipeline compiled into a per-sample uint8 stage and a fused batch stage.

    Args:
        transforms: the pipeline's steps, in order.

    Raises:
        PlanError: the steps cannot be compiled (two resizes, Normalize before ToDtype...).
    """

    def __init__(self, transforms: list[Step]) -> None:
        self.transforms = list(transforms)
        self.sample_ops = [t for t in self.transforms if t.stage == "sample"]
        self.pixel_ops = [t for t in self.transforms if t.stage == "pixel"]
        self._check_pixel_order()
        self.erasing = self._erasing_steps()
        decoders = [t for t in self.transforms if t.stage == "decode"]
        self.reduce = decoders[-1].reduce if decoders else False  # NOTE [ DCT scaling ]
        resizes = [
            t for t in self.sample_ops if type(t).__name__ in ("Resize", "RandomResizedCrop")
        ]
        if len(resizes) > 1:
            raise PlanError(
                "a compiled pipeline can resize once; run the steps one at a time instead"
            )
        self.dtype, self.scale, self.mean, self.std = self._batch_stage()
        self._luts: dict[tuple[str, int], torch.Tensor] = {}
        self._direct = self._direct_steps()
        self._stage = None
        if self._direct is not None:
            from fastdata.transforms.stages import png as smallbatch  # imports this package

            if smallbatch.AVAILABLE:
                self._stage = smallbatch.SmallPngStage(*self._direct)
        elif (resized := self._crop_steps()) is not None:
            from fastdata.transforms.stages import jpeg as jpegbatch  # imports this package

            if jpegbatch.available():
                self._stage = jpegbatch.JpegCropStage(*resized, self.reduce)

    def _check_pixel_order(self) -> None:
        """NOTE [ Pixel stage ]
        The AutoAugment family and AugMix (``stage == "pixel"``, each with an
        ``augment(slot, rng, scratch)`` method) run on the uint8 slot after the
        whole geometric stage, drawing from the same per-sample generator after the crops
        and flips (:meth:`pixels_into`). That is the pipeline's own order only when no
        geometric step follows such a step, which is checked here.
        """
        seen = None
        for t in self.transforms:
            if t.stage == "pixel":
                seen = type(t).__name__
            elif t.stage == "sample" and seen is not None:
                raise PlanError(
                    f"{type(t).__name__} after {seen} cannot be compiled: put the geometric "
                    f"steps (crops, resizes, flips) before {seen}"
                )

    def _erasing_steps(self) -> list[tuple]:
        """``(step, scale_first, normalise)`` of each RandomErasing: how its ``value``
        maps to the output (divided by 255 when it stands before a scaling ToDtype,
        normalised when it stands before Normalize)."""
        out, scaled, normalised = [], False, False
        for t in self.transforms:
            if _is(t, "ToDtype"):
                scaled = scaled or t.scale
            elif _is(t, "Normalize"):
                normalised = True
            elif _is(t, "RandomErasing"):
                out.append((t, not scaled, not normalised))
        return out

    @property
    def has_pixel_stage(self) -> bool:
        """Whether :meth:`pixels_into` does anything (an AutoAugment-family step)."""
        return bool(self.pixel_ops)

    def pixels_into(self, out: np.ndarray, rng: np.random.Generator) -> None:
        """The pixel stage (NOTE [ Pixel stage ]): AutoAugment-family steps on one
        ``(H, W, 3)`` uint8 slot, in place, with operations drawn from ``rng``."""
        if not self.pixel_ops:
            return
        scratch = getattr(_SCRATCH, "slot", None)
        if scratch is None or scratch.shape != out.shape:  # one per thread, not per sample
            scratch = _SCRATCH.slot = np.empty_like(out)
        for t in self.pixel_ops:
            t.augment(out, rng, scratch)

    @property
    def has_batch_augment(self) -> bool:
        """Whether :meth:`augment_batch` does anything (a RandomErasing step)."""
        return bool(self.erasing)

    def augment_batch(self, images: torch.Tensor, rng_of) -> None:
        """Random steps on the converted ``(N, C, H, W)`` batch, in place (RandomErasing).

        Args:
            images: the batch :meth:`finish` returned, on any device.
            rng_of: ``rng_of(i)`` gives sample ``i``'s generator for this stage; it is used
                up before the next call (the engine reuses one generator per thread).
        """
        if not self.erasing:
            return
        n, c, h, w = images.shape
        for i in range(n):
            rng = rng_of(i)
            for t, unscaled, unnormalised in self.erasing:
                box = t.box(rng, h, w)
                if box is None:
                    continue
                top, left, bh, bw = box
                if t.value is None:
                    value = rng.standard_normal((c, bh, bw)).astype(np.float32)
                else:
                    value = np.broadcast_to(np.asarray(t.value, np.float32).reshape(-1, 1, 1), (c, 1, 1))
                value = self._to_output(value, unscaled, unnormalised)
                images[i, :, top : top + bh, left : left + bw] = torch.from_numpy(value).to(
                    images.device, images.dtype
                )

    def _to_output(self, value: np.ndarray, unscaled: bool, unnormalised: bool) -> np.ndarray:
        """An erasing value in the output's units (see :meth:`_erasing_steps`)."""
        value = np.array(value, np.float64)
        if unscaled and self.scale and self.dtype != torch.uint8:
            value = value / 255.0
        if unnormalised and self.dtype != torch.uint8:
            mean = np.broadcast_to(np.asarray(self.mean, np.float64), (value.shape[0],))
            std = np.broadcast_to(np.asarray(self.std, np.float64), (value.shape[0],))
            value = (value - mean.reshape(-1, 1, 1)) / std.reshape(-1, 1, 1)
        return value.astype(np.float32)

    def _direct_steps(self):
        """``(crop, flips)`` when the sample stage is RandomCrop then flips only, else None.

        NOTE [ Resize-free fast path ]
        CIFAR-style pipelines (RandomCrop with padding, flips) never resample, so the
        symbolic geometry, the resampling tables and their NumPy temporaries (tens of
        microseconds of Python per sample, more than decoding a 32x32 PNG) are skipped:
        the same draws, in the same order from the same ``rng``, feed one
        :func:`~fastdata.transforms.kernels.cpu.crop_flip_into` call. The output is
        identical to the general path's (tested).

        The same plans also get a batch-level stage for PNG bytes (:meth:`chunk_into`,
        :mod:`fastdata.transforms.stages.png`) that the batch engine runs on whole chunks of samples;
        it draws its parameters from a counter-based hash instead of ``rng`` (NOTE
        [ Counter-based draws ]) and leaves what it declines to :meth:`sample_into`.
        """
        return self._step_then_flips("RandomCrop")

    def _crop_steps(self):
        """``(crop, flips)`` when the sample stage is RandomResizedCrop then flips only.

        Such plans (the ImageNet training pipeline) get a batch-level stage for JPEG bytes
        (:meth:`chunk_into`, :mod:`fastdata.transforms.stages.jpeg`), with the counter-based draws of
        NOTE [ Counter-based draws ] in :mod:`fastdata.transforms.stages.png`.
        """
        return self._step_then_flips("RandomResizedCrop")

    def _step_then_flips(self, name: str):
        """``(step, [(p, axis), ...])`` when the sample stage is the transform class
        ``name`` followed by flips only (axis 0 vertical, 1 horizontal), else None."""
        ops = self.sample_ops
        if not ops or type(ops[0]).__name__ != name:
            return None
        flips = ops[1:]
        axes = [_FLIP_AXES.get(type(t).__name__) for t in flips]
        if None in axes:
            return None
        return ops[0], [(t.p, a) for t, a in zip(flips, axes, strict=True)]

    @property
    def has_batch_stage(self) -> bool:
        """Whether :meth:`chunk_into` does anything (resize-free plans on PNG bytes,
        RandomResizedCrop-and-flips plans on JPEG bytes)."""
        return self._stage is not None

    def chunk_into(self, sources, indices, key: np.ndarray, out: np.ndarray) -> np.ndarray | None:
        """Batch-level stage: writes the samples it covers into ``out``, in one call.

        Args:
            sources: each sample's encoded bytes (None for one that could not be read).
            indices: each sample's index in the epoch.
            key: the epoch's 128-bit key (``fastdata.loading.engine.SampleRng.key``).
            out: ``(len(sources), H, W, 3)`` uint8 slots.

        Returns:
            A bool per sample, True where its slot was written; the others (declined:
            a format the stage does not decode, corrupt...) go through :meth:`sample_into`. None
            when the plan has no batch-level stage.
        """
        if self._stage is None:
            return None
        if out.dtype != np.uint8 or out.shape[1:] != self.sample_shape or out.ndim != 4:
            raise ValueError(f"out must be uint8 (N, {self.sample_shape}), got {out.shape}")
        return self._stage.run(sources, indices, key, out)[0]

    def _sample_direct(self, src, out, rng, url, key, field) -> None:
        crop, flips = self._direct
        if isinstance(src, (bytes, bytearray, memoryview)):
            h, w = image_size(src, url=url, key=key, field=field)
            arr = None
        else:
            arr = _as_hwc(src)
            h, w = arr.shape[:2]
        top, left = crop.offsets(h, w, rng)
        flip = [False, False]
        for p, axis in flips:
            if rng.random() < p:
                flip[axis] = not flip[axis]
        if arr is None:
            arr = decode_image(src, url=url, key=key, field=field)
        fill = np.asarray(crop.fill, np.uint8)
        mode = PAD_MODES.index(crop.padding_mode)
        cpu.crop_flip_into(arr, top, left, flip[0], flip[1], mode, fill, out)
        self.pixels_into(out, rng)

    def _batch_stage(self):
        dtype, scale, mean, std = torch.uint8, False, None, None
        for t in self.transforms:
            if _is(t, "ToDtype"):
                if dtype != torch.uint8 and t.dtype != dtype:
                    raise PlanError("two ToDtype steps with different dtypes cannot be fused")
                dtype, scale = t.dtype, scale or t.scale
            elif _is(t, "Normalize"):
                if dtype == torch.uint8:
                    raise PlanError(
                        "Normalize needs a float input: put ToDtype(torch.float32, scale=True) before it"
                    )
                if mean is not None:
                    raise PlanError("only one Normalize can be fused")
                mean, std = t.mean, t.std
        return dtype, scale, (0.0,) if mean is None else mean, (1.0,) if std is None else std

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every sample-stage output, declared before any data.

        Raises:
            PlanError: the output size depends on the input (e.g. ``Resize(int)`` last).
        """
        size = None
        for t in self.transforms:
            if t.stage != "batch":
                size = t.declare(size)
        if size is None:
            raise PlanError(
                "the pipeline has no fixed output size, so batches cannot be preallocated: "
                "end it with CenterCrop/RandomCrop/RandomResizedCrop or give Resize an (h, w) size"
            )
        return size[0], size[1], CHANNELS

    def geometry(self, src, rng: np.random.Generator, *, url=None, key=None, field=None):
        """Draw one sample's geometry; returns ``(geometry, decoded array or None)``."""
        if isinstance(src, (bytes, bytearray, memoryview)):
            arr, (h, w) = None, image_size(src, url=url, key=key, field=field)
        else:
            arr = _as_hwc(src)
            h, w = arr.shape[:2]
        geom = Geometry(h, w)
        for t in self.sample_ops:
            t.apply(geom, rng)
        return geom, arr

    def _decoded(self, src, geom: Geometry, arr, url, key, field) -> np.ndarray:
        if arr is not None:
            return arr
        reduce = geom.reducible() if self.reduce and image_format(src) == "jpeg" else None
        arr = decode_image(src, url=url, key=key, field=field, reduce_to=reduce)
        if arr.shape[:2] != geom.source:
            geom.rescale(*arr.shape[:2])
        return arr

    def sample_into(
        self, src, out: np.ndarray, rng: np.random.Generator, *, url=None, key=None, field=None
    ) -> None:
        """Decode (if bytes) and transform one sample straight into ``out``.

        Args:
            src: encoded image bytes, or an HWC uint8 array / CHW uint8 tensor.
            out: caller-owned ``(H, W, 3)`` uint8 array (``sample_shape``), written completely.
            rng: the sample's generator, the only source of its randomness.
            url, key, field: where the sample came from, named in errors.

        Raises:
            DecodeError: the bytes cannot be decoded.
            ValueError: ``out`` does not have the planned shape and dtype.
        """
        if self._direct is not None:
            size = self._direct[0].size
            _check_out(out, size)
            self._sample_direct(src, out, rng, url, key, field)
            return
        geom, arr = self.geometry(src, rng, url=url, key=key, field=field)
        _check_out(out, geom.size())
        if arr is None and self._render_region(src, geom, out, url, key, field):
            self.pixels_into(out, rng)
            return
        self._render(self._decoded(src, geom, arr, url, key, field), geom, out)
        self.pixels_into(out, rng)

    def _render_region(self, src, geom: Geometry, out: np.ndarray, url, key, field) -> bool:
        """Decode only the source pixels the output needs, then resample (NOTE [ Decoding
        only the crop ] in :mod:`fastdata.decode.roi`); False where it does not apply (not a
        JPEG, DCT scaling applies, no region decoder here, a CMYK JPEG)."""
        if image_format(src) != "jpeg" or (self.reduce and geom.reducible() is not None):
            return False
        if not roi.available():
            return False
        tables = self._tables(geom, *geom.source)
        top, bottom = cpu.extent(tables[0][0], tables[0][1])
        left, right = cpu.extent(tables[1][0], tables[1][1])
        if bottom <= top or right <= left:
            return False  # only padding: nothing to decode
        try:
            got = roi.decode_region(src, top, left, bottom - top, right - left)
        except DecodeError as exc:
            raise DecodeError(url, key, field, exc.message) from exc
        if got is None:
            return False
        pixels, used_left = got
        self._render(pixels, geom, out, tables, top, used_left)
        return True

    def sample(self, src, rng: np.random.Generator) -> np.ndarray:
        """Like :meth:`sample_into` but allocates the output (its size may vary with the input)."""
        if self._direct is not None:
            out = np.empty((*self._direct[0].size, CHANNELS), np.uint8)
            self._sample_direct(src, out, rng, None, None, None)
            return out
        geom, arr = self.geometry(src, rng)
        out = np.empty((*geom.size(), CHANNELS), np.uint8)
        self._render(self._decoded(src, geom, arr, None, None, None), geom, out)
        self.pixels_into(out, rng)
        return out

    @staticmethod
    def _tables(geom: Geometry, height: int, width: int) -> tuple[tuple, tuple]:
        """The resampling tables of both axes for a source of ``height`` x ``width``."""
        (yl, ylen, yn, yrows, kind, aa), (xl, xlen, xn, xrows, _, _) = geom.axes()
        return (
            _axis_table(height, yl, ylen, yn, yrows, kind, aa),
            _axis_table(width, xl, xlen, xn, xrows, kind, aa),
        )

    @staticmethod
    def _render(
        arr: np.ndarray, geom: Geometry, out: np.ndarray, tables=None, top=0, left=0
    ) -> None:
        """Resample ``arr`` into ``out``; ``arr`` holds the source from row ``top`` and
        column ``left`` on, and ``tables`` (default: made for ``arr``) index the source."""
        (ys, yc, yw), (xs, xc, xw) = tables or Plan._tables(geom, *arr.shape[:2])
        fill = np.asarray(geom.fill, np.uint8)
        cpu.resample_into(
            np.ascontiguousarray(arr),
            ys - top,
            yc,
            yw,
            xs - left,
            xc,
            xw,
            fill,
            np.float32(geom.gain),
            out,
        )

    @property
    def out_dtype(self) -> torch.dtype:
        """dtype of the tensors :meth:`finish` returns."""
        return self.dtype

    def lut(self, device: torch.device) -> torch.Tensor:
        """The batch stage's ``(C, 256)`` table on ``device`` (cached)."""
        k = (str(device), CHANNELS)
        if k not in self._luts:
            table = normalize_lut(self.mean, self.std, CHANNELS, self.dtype, self.scale)
            self._luts[k] = table.to(device)
        return self._luts[k]

    def finish(
        self, batch: torch.Tensor, device=None, memory_format=torch.contiguous_format, out=None
    ) -> torch.Tensor:
        """Convert a uint8 NHWC batch into the pipeline's output, NCHW, on ``device``.

        Args:
            batch: ``(N, H, W, 3)`` uint8 tensor (pinned memory makes the copy asynchronous).
            device: where the result lives; default the batch's device. The uint8 batch is
                moved first, so a GPU converts 4x fewer bytes than it would receive in float32.
            memory_format: ``torch.contiguous_format`` (NCHW) or ``torch.channels_last``.
            out: optional preallocated result with the right shape, dtype and layout.

        Raises:
            ValueError: ``batch`` is not a uint8 NHWC tensor with 3 channels.
        """
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[3] != CHANNELS:
            raise ValueError(
                f"finish expects a uint8 (N, H, W, 3) tensor, got {batch.dtype} {tuple(batch.shape)}"
            )
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        nchw = batch.permute(0, 3, 1, 2)
        if self.dtype == torch.uint8:
            return nchw.contiguous(memory_format=memory_format)
        if out is None:
            out = torch.empty(
                nchw.shape, dtype=self.dtype, device=batch.device, memory_format=memory_format
            )
        select_backend(batch.device).normalize_into(batch.contiguous(), self.lut(batch.device), out)
        return out

    def __call__(self, sample, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Run both stages on one sample; returns a CHW tensor."""
        rng = default_rng() if rng is None else rng
        hwc = self.sample(sample, rng)
        batch = self.finish(torch.from_numpy(hwc)[None])
        self.augment_batch(batch, lambda i: rng)
        return batch[0]


def run_sequential(
    transforms: list[Step], sample, rng: np.random.Generator | None = None
) -> torch.Tensor:
    """Apply steps one at a time to one sample (for pipelines one plan cannot express).

    A floating-point CHW tensor input accepts only ToDtype and Normalize, applied with torch ops.
    """
    rng = default_rng() if rng is None else rng
    if isinstance(sample, torch.Tensor) and sample.is_floating_point():
        return _float_steps(transforms, sample)
    current = sample
    for i, t in enumerate(transforms):
        if t.stage == "batch":
            return Plan(transforms[i:])(
                _as_hwc(current) if not isinstance(current, bytes) else current, rng
            )
        if t.stage == "decode":
            if isinstance(current, (bytes, bytearray, memoryview)):
                current = decode_image(bytes(current))
            continue
        if t.stage == "pixel":
            if isinstance(current, (bytes, bytearray, memoryview)):
                current = decode_image(bytes(current))
            current = np.array(_as_hwc(current), copy=True, order="C")
            Plan([t]).pixels_into(current, rng)
            continue
        current = Plan([t]).sample(current, rng)
    if isinstance(current, (bytes, bytearray, memoryview)):
        current = decode_image(bytes(current))
    return torch.from_numpy(np.ascontiguousarray(_as_hwc(current))).permute(2, 0, 1).contiguous()


def _float_steps(transforms: list[Step], x: torch.Tensor) -> torch.Tensor:
    for t in transforms:
        if _is(t, "ToDtype"):
            x = x.to(t.dtype)
        elif _is(t, "Normalize"):
            mean = torch.tensor(t.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.tensor(t.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            x = (x - mean) / std
        else:
            raise TypeError(
                f"{type(t).__name__} takes uint8 images (bytes, HWC arrays or CHW uint8 tensors)"
            )
    return x


def compile_pipeline(transforms) -> Plan:
    """Compile a :class:`Compose` (or a list of transforms) into a :class:`Plan`."""
    return Plan(getattr(transforms, "transforms", transforms))
