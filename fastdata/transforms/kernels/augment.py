"""Numba kernels of the AutoAugment family's operations on one uint8 HWC image, in place.

Each operation is torchvision's (``torchvision.transforms.v2.functional`` on a uint8
tensor), re-derived so that the arithmetic happens in the same precision and order:

- point operations (Brightness, Color, Contrast, Posterize, Solarize, AutoContrast,
  Equalize, Invert) compute in float32 and truncate to uint8, as torchvision's blend does;
- Sharpness blurs with the 3x3 kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13``, rounds the
  blur, blends, and leaves the one-pixel border alone;
- the geometric operations (ShearX/Y, TranslateX/Y, Rotate) sample with nearest or
  bilinear interpolation through the inverse affine matrix of
  ``torchvision.transforms.functional._get_inverse_affine_matrix``, with the float32 grid
  of ``_affine_grid`` and ``grid_sample(align_corners=False)``; pixels that map outside
  the image get ``fill``. Rotations by 180 degrees (and by 90/270 on square images) are
  exact transpositions, as in torchvision.

NOTE [ Bilinear geometric operations ]
torchvision samples a float32 copy with ``grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)``; torch's CPU kernel unnormalises with
``(g + 1) * (size / 2) - 0.5`` and sums ``nw_val * nw + ne_val * ne + sw_val * sw +
se_val * se`` with fused multiply-adds (as its x86 build contracts them), and
:func:`_affine_bilinear` does the same, so that the result is the same to the bit there.
With a fill, torchvision samples an extra all-ones channel (the mask, the in-image share
of the weights) and computes ``(v - fill) * mask + fill`` (v2; v1's ``v * mask + (1 -
mask) * fill`` is the same up to float rounding); the sampled value is already darkened by
the zero padding, so the fill is blended into a darkened border. Without a fill
(``fill=None``) there is no mask. Both round half to even to uint8.

``apply_op(img, op, magnitude, fill, scratch, bilinear)`` is the one entry point; ``op`` is an index
into :data:`OPS`. ``mix_start``, ``mix_add`` and ``mix_finish`` are AugMix's float32
mixing (:mod:`fastdata.transforms.augmix`). All kernels release the GIL.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["OPS", "apply_op", "affine_matrix", "mix_start", "mix_add", "mix_finish"]

OPS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
    "Invert",
)  # fmt: skip
_ID = {name: i for i, name in enumerate(OPS)}
_GEOMETRIC = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"}


def affine_matrix(op: str, magnitude: float, height: int, width: int) -> list[float]:
    """The inverse affine matrix (6 floats) torchvision uses for a geometric ``op``."""
    center = (0.0, 0.0)
    angle, translate, shear = 0.0, (0.0, 0.0), (0.0, 0.0)
    if op in ("ShearX", "ShearY"):
        center = (-width * 0.5, -height * 0.5)  # torchvision shears about the top-left corner
        s = math.degrees(math.atan(magnitude))
        shear = (s, 0.0) if op == "ShearX" else (0.0, s)
    elif op == "TranslateX":
        translate = (float(int(magnitude)), 0.0)
    elif op == "TranslateY":
        translate = (0.0, float(int(magnitude)))
    elif op == "Rotate":
        angle = -(magnitude % 360)
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    (cx, cy), (tx, ty) = center, translate
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def apply_op(
    img: np.ndarray, op: int, magnitude: float, fill: np.ndarray, scratch: np.ndarray,
    bilinear: bool = False,
) -> None:  # fmt: skip
    """Applies operation ``OPS[op]`` with ``magnitude`` to ``img`` (HWC uint8), in place.

    Args:
        img: C-contiguous ``(H, W, 3)`` uint8 image, overwritten.
        op: index into :data:`OPS`.
        magnitude: the operation's magnitude as torchvision passes it (already signed).
        fill: ``(3,)`` uint8 value of pixels a geometric operation brings in from outside,
            or an empty array for torchvision's ``fill=None`` (black, and no fill mask
            with bilinear sampling: NOTE [ Bilinear geometric operations ]).
        scratch: uint8 array of ``img``'s shape, used as temporary memory.
        bilinear: sample the geometric operations bilinearly instead of nearest.
    """
    name = OPS[op]
    h, w = img.shape[:2]
    if name == "Identity":
        return
    if name in _GEOMETRIC:
        if name == "Rotate":
            angle = magnitude % 360
            if angle == 0:
                return
            quarter = {180.0: 2, 90.0: 1, 270.0: 3}.get(float(angle)) if h == w or angle == 180 else None
            if quarter is not None:
                # torch.rot90 turns counter-clockwise in (H, W): the same as np.rot90.
                scratch[:] = np.rot90(img, quarter)
                img[:] = scratch
                return
        m = np.asarray(affine_matrix(name, magnitude, h, w), np.float32)
        if bilinear:
            _affine_bilinear(img, m, fill, scratch)
        else:
            _affine_nearest(img, m, fill if len(fill) else np.zeros(3, np.uint8), scratch)
        img[:] = scratch
        return
    # torch's blends take ``alpha=1.0 - ratio`` in double precision, then round it to float32
    factor, rest = 1.0 + magnitude, 1.0 - (1.0 + magnitude)
    if name == "Sharpness":
        _sharpness(img, np.float32(rest), scratch)
        return
    if name == "Posterize":
        bits = int(magnitude)
        if bits < 8:
            _and(img, np.uint8(((1 << bits) - 1) << (8 - bits)))
        return
    _point(img, _ID[name], np.float32(magnitude), np.float32(factor), np.float32(rest))


@njit(nogil=True, cache=True)
def _affine_nearest(img, m, fill, out):
    h, w = img.shape[0], img.shape[1]
    hw, hh = np.float32(0.5 * w), np.float32(0.5 * h)
    r00, r10, r20 = m[0] / hw, m[1] / hw, m[2] / hw
    r01, r11, r21 = m[3] / hh, m[4] / hh, m[5] / hh
    one, fw, fh = np.float32(1.0), np.float32(w), np.float32(h)
    for y in range(h):
        by = np.float32(y) - np.float32((h - 1) * 0.5)
        for x in range(w):
            bx = np.float32(x) - np.float32((w - 1) * 0.5)
            gx = bx * r00 + by * r10 + r20
            gy = bx * r01 + by * r11 + r21
            ix = ((gx + one) * fw - one) / np.float32(2.0)
            iy = ((gy + one) * fh - one) / np.float32(2.0)
            sx, sy = int(np.rint(ix)), int(np.rint(iy))
            if 0 <= sx < w and 0 <= sy < h:
                for c in range(3):
                    out[y, x, c] = img[sy, sx, c]
            else:
                for c in range(3):
                    out[y, x, c] = fill[c]


@njit(nogil=True, cache=True)
def _affine_bilinear(img, m, fill, out):
    """Bilinear sampling as torch's CPU ``grid_sample(padding_mode="zeros",
    align_corners=False)`` computes it in float32, then torchvision's fill and rounding
    (NOTE [ Bilinear geometric operations ]). ``fill`` is ``(3,)`` uint8, or empty for
    torchvision's ``fill=None`` (no mask: the zero padding alone)."""
    h, w = img.shape[0], img.shape[1]
    hw, hh = np.float32(0.5 * w), np.float32(0.5 * h)
    r00, r10, r20 = m[0] / hw, m[1] / hw, m[2] / hw
    r01, r11, r21 = m[3] / hh, m[4] / hh, m[5] / hh
    one, zero, half = np.float32(1.0), np.float32(0.0), np.float32(0.5)
    masked = fill.shape[0] > 0
    f = np.zeros(3, np.float32)
    if masked:
        for c in range(3):
            f[c] = np.float32(fill[c])
    v = np.zeros(3, np.float32)
    for y in range(h):
        by = np.float32(y) - np.float32((h - 1) * 0.5)
        for x in range(w):
            bx = np.float32(x) - np.float32((w - 1) * 0.5)
            gx = bx * r00 + by * r10 + r20
            gy = bx * r01 + by * r11 + r21
            ix = _fma(gx + one, hw, -half)  # torch's (g + 1) * size / 2 - 0.5, contracted
            iy = _fma(gy + one, hh, -half)
            fx, fy = np.float32(math.floor(ix)), np.float32(math.floor(iy))
            ew = ix - fx
            ee = one - ew
            en = iy - fy
            es = one - en
            weights = (es * ee, es * ew, en * ee, en * ew)  # nw, ne, sw, se
            x0, y0 = int(fx), int(fy)
            # torch: nw_val * nw + ne_val * ne + sw_val * sw + se_val * se, the adds fused
            # (values outside the image read as 0; the mask channel's values are 1)
            inside = 0 <= x0 < w and 0 <= y0 < h
            mask = weights[0] if inside else zero
            for c in range(3):
                v[c] = np.float32(img[y0, x0, c]) * weights[0] if inside else zero
            for k in range(1, 4):
                sx, sy = x0 + (k & 1), y0 + (k >> 1)
                if 0 <= sx < w and 0 <= sy < h:
                    wk = weights[k]
                    mask = _fma(one, wk, mask)
                    for c in range(3):
                        v[c] = _fma(np.float32(img[sy, sx, c]), wk, v[c])
            for c in range(3):
                r = v[c]
                if masked:  # v2: ``float_img.sub_(fill).mul_(mask).add_(fill)``
                    r = (r - f[c]) * mask + f[c]
                r = min(max(np.float32(np.rint(r)), zero), np.float32(255.0))
                out[y, x, c] = np.uint8(r)


@njit(nogil=True, cache=True)
def _and(img, mask):
    flat = img.reshape(-1)
    for i in range(flat.shape[0]):
        flat[i] = flat[i] & mask


@njit(nogil=True, cache=True, inline="always")
def _fma(a, b, c):
    """``a * b + c`` rounded once to float32, as torch's vectorised ``add_(.., alpha=)``
    computes it (a fused multiply-add; the float64 product of two float32 is exact)."""
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


@njit(nogil=True, cache=True, inline="always")
def _gray(r, g, b):
    """torchvision's ``rgb_to_grayscale`` in float32, floored (uint8 input):
    ``r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114)``."""
    v = np.float32(r) * np.float32(0.2989)
    v = _fma(np.float32(g), np.float32(0.587), v)
    return math.floor(_fma(np.float32(b), np.float32(0.114), v))


@njit(nogil=True, cache=True, inline="always")
def _blend(v, other, ratio, rest):
    """``clamp(v * ratio + other * rest, 0, 255)`` truncated, in float32 (``rest`` is
    ``1 - ratio`` computed in double precision, as torch's ``add_(.., alpha=1.0 - ratio)``)."""
    x = _fma(np.float32(other), rest, np.float32(v) * ratio)
    return np.uint8(min(max(x, np.float32(0.0)), np.float32(255.0)))


@njit(nogil=True, cache=True)
def _point(img, op, magnitude, factor, rest):
    h, w = img.shape[0], img.shape[1]
    if op == 7:  # Color (saturation): blend with the grayscale image
        for y in range(h):
            for x in range(w):
                g = _gray(img[y, x, 0], img[y, x, 1], img[y, x, 2])
                for c in range(3):
                    img[y, x, c] = _blend(img[y, x, c], g, factor, rest)
        return
    if op == 13:
        _equalize(img)
        return
    lut = np.empty((3, 256), np.uint8)
    if op == 6:  # Brightness: blend with black
        for v in range(256):
            lut[:, v] = _blend(v, 0.0, factor, rest)
    elif op == 8:  # Contrast: blend with the grayscale image's mean
        total = 0.0
        for y in range(h):
            for x in range(w):
                total += _gray(img[y, x, 0], img[y, x, 1], img[y, x, 2])
        mean = np.float32(total / (h * w))
        for v in range(256):
            lut[:, v] = _blend(v, mean, factor, rest)
    elif op == 11:  # Solarize: invert values >= 255 * magnitude
        threshold = np.float32(255.0) * magnitude
        for v in range(256):
            lut[:, v] = 255 - v if np.float32(v) >= threshold else v
    elif op == 14:  # Invert
        for v in range(256):
            lut[:, v] = 255 - v
    elif op == 12:
        _autocontrast_lut(img, lut)
    _apply_lut(img, lut)


@njit(nogil=True, cache=True)
def _apply_lut(img, lut):
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                img[y, x, c] = lut[c, img[y, x, c]]


@njit(nogil=True, cache=True)
def _autocontrast_lut(img, lut):
    h, w = img.shape[0], img.shape[1]
    lo = np.full(3, 255, np.int64)
    hi = np.zeros(3, np.int64)
    for y in range(h):
        for x in range(w):
            for c in range(3):
                v = img[y, x, c]
                lo[c], hi[c] = min(lo[c], v), max(hi[c], v)
    for c in range(3):
        if lo[c] == hi[c]:
            for v in range(256):
                lut[c, v] = v
            continue
        inv_scale = np.float32(hi[c] - lo[c]) * np.float32(1.0 / 255.0)
        for v in range(256):
            x = (np.float32(v) - np.float32(lo[c])) / inv_scale
            lut[c, v] = np.uint8(min(max(x, np.float32(0.0)), np.float32(255.0)))


@njit(nogil=True, cache=True)
def _equalize(img):
    """PIL's equalisation as torchvision computes it (``equalize_image``), per channel."""
    h, w = img.shape[0], img.shape[1]
    lut = np.empty(256, np.uint8)
    for c in range(3):
        hist = np.zeros(256, np.int64)
        for y in range(h):
            for x in range(w):
                hist[img[y, x, c]] += 1
        top = 255
        while hist[top] == 0:
            top -= 1
        step = (h * w - hist[top]) // 255
        if step == 0:
            continue
        lut[0] = 0
        cum = 0
        for k in range(255):
            cum += hist[k]
            lut[k + 1] = min(max((cum + step // 2) // step, 0), 255)
        for y in range(h):
            for x in range(w):
                img[y, x, c] = lut[img[y, x, c]]


@njit(nogil=True, cache=True)
def _sharpness(img, keep, scratch):
    h, w = img.shape[0], img.shape[1]
    if h <= 2 or w <= 2:
        return
    scratch[:] = img
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            for c in range(3):
                total = np.int64(scratch[y, x, c]) * 4
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        total += scratch[y + dy, x + dx, c]
                blur = np.float32(np.rint(np.float32(total) / np.float32(13.0)))
                v = np.float32(scratch[y, x, c])
                out = _fma(blur - v, keep, v)  # torch: view.add_(blur.sub_(view), alpha=keep)
                img[y, x, c] = np.uint8(min(max(out, np.float32(0.0)), np.float32(255.0)))


@njit(nogil=True, cache=True)
def mix_start(acc, img, weight):
    """``acc = weight * img`` in float32 (``acc`` float32, ``img`` uint8, same shape)."""
    a, x = acc.reshape(-1), img.reshape(-1)
    for i in range(a.shape[0]):
        a[i] = weight * np.float32(x[i])


@njit(nogil=True, cache=True)
def mix_add(acc, img, weight):
    """``acc += weight * img`` in float32, the product rounded before the sum (torch's
    ``mix.add_(w * aug)``)."""
    a, x = acc.reshape(-1), img.reshape(-1)
    for i in range(a.shape[0]):
        p = weight * np.float32(x[i])
        a[i] = a[i] + p


@njit(nogil=True, cache=True)
def mix_finish(acc, out):
    """``out = acc`` truncated towards zero to uint8, as torch's ``.to(torch.uint8)`` does
    (clamped to [0, 255] first: a sum of convex weights may overshoot 255 by float error)."""
    a, o = acc.reshape(-1), out.reshape(-1)
    for i in range(a.shape[0]):
        o[i] = np.uint8(min(max(a[i], np.float32(0.0)), np.float32(255.0)))
