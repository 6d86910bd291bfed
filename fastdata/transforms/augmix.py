"""AugMix, declared: chains of AutoAugment operations mixed with the original image.

A ``"pixel"``-stage step like the rest of the AutoAugment family
(:mod:`fastdata.transforms.autoaugment`, NOTE [ Pixel stage ] in
:mod:`fastdata.transforms.plan`): it runs on the uint8 slot after the geometric stage and
draws everything from the sample's generator. NOTE [ AugMix ] gives the draws and the
arithmetic.
"""

from __future__ import annotations

import numbers

import numpy as np

from fastdata.transforms.autoaugment import (
    Table,
    _fill_array,
    _interpolation,
    _linspace,
    _none,
    _posterize,
)  # fmt: skip
from fastdata.transforms.kernels.augment import OPS, apply_op, mix_add, mix_finish, mix_start
from fastdata.transforms.ops import Transform, _fill

__all__ = ["AugMix"]

_PARAMETER_MAX = 10  # torchvision's number of magnitude bins for AugMix

_PARTIAL: Table = {
    "ShearX": (_linspace(0.3), True),
    "ShearY": (_linspace(0.3), True),
    "TranslateX": (lambda bins, h, w: _linspace(w / 3.0)(bins, h, w), True),
    "TranslateY": (lambda bins, h, w: _linspace(h / 3.0)(bins, h, w), True),
    "Rotate": (_linspace(30.0), True),
    "Posterize": (_posterize(4, 4), False),
    "Solarize": (_linspace(0.0, 1.0), False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
_ALL: Table = _PARTIAL | {
    "Brightness": (_linspace(0.9), True),
    "Color": (_linspace(0.9), True),
    "Contrast": (_linspace(0.9), True),
    "Sharpness": (_linspace(0.9), True),
}


class AugMix(Transform):
    """NOTE [ AugMix ]
    torchvision's AugMix (``transforms.AugMix`` and ``transforms.v2.AugMix``) on one uint8
    image, with its draws in its order, from the sample's generator:

    1. ``m ~ Dirichlet(alpha, alpha)``: ``m[0]`` weighs the original image;
    2. ``d ~ Dirichlet(alpha, ..., alpha)`` (``mixture_width`` of them); chain ``i`` is
       weighed ``d[i] * m[1]`` (in float32, as torch's float32 samples multiply);
    3. per chain: its depth (``chain_depth``, or uniform in 1..3 when it is not positive),
       then per operation: the operation (uniform over the 9 operations, or 13 with
       ``all_ops``), its magnitude bin (uniform in ``[0, severity)`` of 10 bins, for
       operations that have magnitudes) and its sign (half the time, for signed ones).

    Each chain applies its operations to a uint8 copy of the image with the same kernels
    as the other AutoAugment steps (:func:`~fastdata.transforms.kernels.augment.apply_op`),
    so each operation's result is uint8, as torchvision's is. The mix is torch's float32
    arithmetic in torch's order: ``mix = m[0] * img``, then ``mix += w_i * chain_i`` chain
    by chain, and the result is truncated to uint8 (torch's float-to-uint8 conversion), not
    rounded. The magnitude bins are torchvision's (float32 ``torch.linspace``): Solarize
    uses v2's fraction of 255 (v1's pixel thresholds ``linspace(255, 0)`` are the same
    thresholds up to float rounding).

    Args:
        severity: magnitude bins drawn from, ``1..10``.
        mixture_width: number of chains (at least 1).
        chain_depth: operations per chain; not positive: uniform in 1..3 per chain.
        alpha: the Dirichlet/Beta concentration (positive).
        all_ops: also use Brightness, Color, Contrast and Sharpness.
        interpolation: ``"nearest"`` or ``"bilinear"`` (or an ``InterpolationMode``), for
            the geometric operations; default nearest (torchvision's default is bilinear:
            :func:`~fastdata.transforms.tv.from_torchvision` reads it from the object).
        fill: value (number or RGB triple) of pixels brought in by a geometric operation.
    """

    stage = "pixel"

    def __init__(
        self, severity: int = 3, mixture_width: int = 3, chain_depth: int = -1, alpha: float = 1.0,
        all_ops: bool = True, interpolation="nearest", fill=None,
    ) -> None:  # fmt: skip
        self.interpolation = _interpolation(interpolation)
        if not isinstance(severity, numbers.Integral) or not 1 <= severity <= _PARAMETER_MAX:
            raise ValueError(f"AugMix: severity must be an int in [1, {_PARAMETER_MAX}], got {severity!r}")
        if not isinstance(mixture_width, numbers.Integral) or mixture_width < 1:
            raise ValueError(f"AugMix: mixture_width must be an int >= 1, got {mixture_width!r}")
        if not isinstance(chain_depth, numbers.Integral):
            raise ValueError(f"AugMix: chain_depth must be an int (<= 0 for 1..3 at random), got {chain_depth!r}")
        if not float(alpha) > 0:
            raise ValueError(f"AugMix: alpha must be positive, got {alpha!r}")
        self.severity, self.mixture_width = int(severity), int(mixture_width)
        self.chain_depth, self.alpha, self.all_ops = int(chain_depth), float(alpha), bool(all_ops)
        self.fill = None if fill is None else _fill(fill)  # None: torchvision's no-fill
        self._bins: dict[tuple, list[float] | None] = {}

    @property
    def _space(self) -> Table:
        # a property, not an attribute: the table's lambdas do not pickle (worker processes)
        return _ALL if self.all_ops else _PARTIAL

    def magnitudes(self, op: str, height: int, width: int) -> list[float] | None:
        """The 10 magnitude bins of ``op`` for an image of ``height`` x ``width`` (cached)."""
        k = (op, height, width)
        if k not in self._bins:
            self._bins[k] = self._space[op][0](_PARAMETER_MAX, height, width)
        return self._bins[k]

    def draw(
        self, rng: np.random.Generator, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, float]]]]:
        """One sample's draws (NOTE [ AugMix ]).

        Returns:
            ``(m, d, chains)``: the float32 Beta pair ``m`` (original, augmented), the
            float32 Dirichlet chain weights ``d`` (``mixture_width``), and each chain's
            operations ``[(index into OPS, signed magnitude), ...]``.
        """
        m = rng.dirichlet([self.alpha, self.alpha]).astype(np.float32)
        d = rng.dirichlet([self.alpha] * self.mixture_width).astype(np.float32)
        names, chains = tuple(self._space), []
        for _ in range(self.mixture_width):
            depth = self.chain_depth if self.chain_depth > 0 else int(rng.integers(1, 4))
            chain = []
            for _ in range(depth):
                op = names[int(rng.integers(len(names)))]
                bins, magnitude = self.magnitudes(op, height, width), 0.0
                if bins is not None:
                    magnitude = float(bins[int(rng.integers(self.severity))])
                    if self._space[op][1] and rng.random() <= 0.5:
                        magnitude = -magnitude
                chain.append((OPS.index(op), magnitude))
            chains.append(chain)
        return m, d, chains

    def mix(
        self, img: np.ndarray, m: np.ndarray, d: np.ndarray, chains: list, scratch: np.ndarray
    ) -> None:
        """Applies the drawn chains to copies of ``img`` and mixes them into ``img``, in place.

        Args:
            img: C-contiguous ``(H, W, 3)`` uint8 image, overwritten.
            m, d, chains: the draws (:meth:`draw`).
            scratch: uint8 array of ``img``'s shape, used as temporary memory.
        """
        fill, bilinear = _fill_array(self.fill), self.interpolation == "bilinear"
        m, d = np.asarray(m, np.float32), np.asarray(d, np.float32)
        acc = np.empty(img.shape, np.float32)
        work = np.empty_like(img)
        mix_start(acc, img, m[0])
        for weight, chain in zip(d * m[1], chains, strict=True):
            work[:] = img
            for op, magnitude in chain:
                apply_op(work, op, magnitude, fill, scratch, bilinear)
            mix_add(acc, work, weight)
        mix_finish(acc, img)

    def augment(self, img: np.ndarray, rng: np.random.Generator, scratch: np.ndarray) -> None:
        """Applies AugMix to ``img`` (C-contiguous ``(H, W, 3)`` uint8), in place."""
        self.mix(img, *self.draw(rng, *img.shape[:2]), scratch)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"
