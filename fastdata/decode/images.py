"""Image decoding: encoded bytes to HWC uint8 RGB arrays.

JPEG goes through simplejpeg (libjpeg-turbo), which was the fastest decoder we measured
on ImageNet-like photographs (see BENCHMARKS.md, "Transforms / decoders") and which can
decode straight into a reduced size with libjpeg's DCT scaling. 8-bit non-interlaced PNGs
go through :mod:`fastdata.decode.png` (zlib and a Numba kernel, about 10x less Python than Pillow
for small images); other PNGs, WebP and anything else Pillow can read go through Pillow.
All of them release the GIL while they decode, so threads decoding different samples run
in parallel.

NOTE [ Colour conversion ]
Every image comes out as 3-channel RGB: grayscale is replicated into three channels,
palette images are expanded, and an alpha channel is dropped (not composited), which is
what ``torchvision.io.decode_image(..., mode=ImageReadMode.RGB)`` and Pillow's
``convert("RGB")`` do. 16-bit PNGs are reduced to 8 bits by Pillow's conversion.

NOTE [ DCT scaling ]
A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size (and other multiples of 1/8) for a
fraction of the cost, because the inverse DCT is computed at the smaller size. When the
final crop is going to be shrunk by 2x or more anyway, decoding at the reduced size
loses little and saves most of the decode time. ``reduce_to=(h, w)`` asks for the
smallest such decoding that is still at least ``h`` x ``w``; callers compute the
minimum size from the crop they will take, scaled to the full image.
It is not what torchvision computes, though: its reference (Pillow's antialiased resize of
the full decode) differs from a DCT-scaled decode resized the same way by up to 14/255 on
real photographs, on 1-7% of the values at outputs of 128 down to 24 pixels; from the full
decode fastdata stays within 1/255. So plans decode whole images unless asked otherwise
(``DecodeImage(reduce=True)``), trading that parity for speed.

NOTE [ Pixel limit ]
A small file can declare a huge image (a 600 KB PNG of 25000x25000 pixels decodes to
1.9 GB of RGB). Every decode reads the image's size from its header first and refuses an
image of more than ``max_image_pixels()`` pixels with a ``DecodeError`` naming the file,
before any pixel memory is allocated; under ``on_error="skip"`` that is a counted skip.
The default is Pillow's ``MAX_IMAGE_PIXELS`` (89,478,485, about 9459x9459), the size at
which Pillow warns of a decompression bomb (torchvision, through Pillow, raises at twice
that); ``set_max_image_pixels`` changes it for this process and the worker processes it
starts afterwards (None: no limit). Formats decoded through Pillow are also subject to
Pillow's own check.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from fastdata.decode.png import decode_png, png_size
from fastdata.errors import DecodeError

__all__ = [
    "decode_image",
    "image_size",
    "image_format",
    "check_pixels",
    "max_image_pixels",
    "set_max_image_pixels",
]

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS (Pillow 10 and 11)
_max_pixels: list[int | None] = [DEFAULT_MAX_IMAGE_PIXELS]


def max_image_pixels() -> int | None:
    """The largest image (in pixels) that is decoded; None: no limit (NOTE [ Pixel limit ])."""
    return _max_pixels[0]


def set_max_image_pixels(limit: int | None) -> None:
    """Sets the pixel limit of NOTE [ Pixel limit ] (None: no limit).

    Raises:
        ValueError: ``limit`` is not a positive integer or None.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"the pixel limit must be a positive int or None, got {limit!r}")
    _max_pixels[0] = limit


def check_pixels(
    height: int, width: int, *, url: str | None = None, key: str | None = None, field: str | None = None
) -> None:
    """Raises ``DecodeError`` for an image larger than the pixel limit (NOTE [ Pixel limit ])."""
    limit = _max_pixels[0]
    if limit is not None and int(height) * int(width) > limit:
        raise DecodeError(
            url, key, field,
            f"image of {width}x{height} = {int(height) * int(width)} pixels is larger than the limit "
            f"of {limit} (a decompression bomb?); raise it with "
            "fastdata.decode.images.set_max_image_pixels(n) if the image is genuine",
        )  # fmt: skip

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_format(data: bytes) -> str:
    """Return ``"jpeg"``, ``"png"``, ``"webp"`` or ``"other"`` from the leading bytes."""
    head = bytes(data[:16])
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "other"


def image_size(
    data: bytes, *, url: str | None = None, key: str | None = None, field: str | None = None
) -> tuple[int, int]:
    """Return ``(height, width)`` of an encoded image without decoding its pixels.

    Raises:
        DecodeError: the header cannot be read.
    """
    size = _header_size(data, url, key, field)
    check_pixels(*size, url=url, key=key, field=field)
    return size


def _header_size(data, url: str | None, key: str | None, field: str | None) -> tuple[int, int]:
    try:
        if image_format(data) == "jpeg":
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(height), int(width)
        size = png_size(data)
        if size is not None:
            return size
        with Image.open(io.BytesIO(data)) as img:
            return int(img.height), int(img.width)
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DecodeError(url, key, field, f"cannot read the image header: {exc}") from exc


def decode_image(
    data: bytes,
    *,
    url: str | None = None,
    key: str | None = None,
    field: str | None = None,
    reduce_to: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode JPEG/PNG/WebP (or anything Pillow reads) bytes to an HWC uint8 RGB array.

    Args:
        data: the encoded image.
        url: shard or file the bytes came from, named in errors.
        key: sample key, named in errors.
        field: field (extension) of the sample, named in errors.
        reduce_to: ``(min_height, min_width)``; a JPEG is then decoded at the smallest
            DCT-scaled size that is still at least this large (see NOTE [ DCT scaling ]).
            Other formats ignore it.

    Returns:
        A C-contiguous ``(H, W, 3)`` uint8 array.

    Raises:
        DecodeError: the bytes are corrupt, truncated or not an image.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    kind, first_error = image_format(data), None
    if _max_pixels[0] is not None and kind != "jpeg":  # NOTE [ Pixel limit ] (JPEG: below)
        try:
            size = _header_size(data, url, key, field)
        except DecodeError:
            size = None  # the decoder below reports what is wrong with the file
        if size is not None:
            check_pixels(*size, url=url, key=key, field=field)
    if kind == "jpeg":
        try:
            return _decode_jpeg(data, reduce_to, url, key, field)
        except ValueError as exc:
            # CMYK/YCCK and other exotic JPEGs: let Pillow try before giving up.
            first_error = exc
    elif kind == "png":
        try:
            arr = decode_png(data)
        except (ValueError, zlib.error) as exc:
            raise DecodeError(url, key, field, f"cannot decode image: {exc}") from exc
        if arr is not None:  # None: a PNG variant only Pillow decodes
            return arr
    try:
        return _decode_pil(data)
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        cause = first_error or exc
        raise DecodeError(url, key, field, f"cannot decode image: {cause}") from cause


def _decode_jpeg(
    data: bytes, reduce_to: tuple[int, int] | None, url: str | None, key: str | None, field: str | None
) -> np.ndarray:
    """simplejpeg's decode after one header read: the pixel limit (NOTE [ Pixel limit ]), the
    colour space and the DCT scaling all come from it. ``ValueError``: let Pillow try."""
    min_h, min_w = (0, 0) if reduce_to is None else (int(reduce_to[0]), int(reduce_to[1]))
    if reduce_to is not None and (min_h < 1 or min_w < 1):
        raise ValueError(f"reduce_to must be two positive sizes, got {reduce_to!r}")
    factor = 1.0 if reduce_to is None else 2.0
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    check_pixels(height, width, url=url, key=key, field=field)
    if colorspace in ("CMYK", "YCCK"):
        # simplejpeg's CMYK->RGB differs from Pillow's (which torchvision's
        # loader uses) by up to 2/255; Pillow decodes these (rare) files instead.
        raise ValueError(f"{colorspace} JPEG: decoded by Pillow")
    if reduce_to is not None:
        if height < 2 * min_h or width < 2 * min_w:
            # No 1/2 scaling possible; M/8 scalings above 1/2 are slower than a full decode.
            factor, min_h, min_w = 1.0, 0, 0
    return simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        min_height=min_h,
        min_width=min_w,
        min_factor=factor,
        strict=True,
    )


def _decode_pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
