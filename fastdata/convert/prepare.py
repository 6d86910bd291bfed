"""Per-sample work of a conversion, run in worker processes.

``prepare_item`` reads one source item and turns it into the encoded fields of a shard
sample, plus what the main process needs for the index: a content digest (for
de-duplication), the image size, and pixel sums for the dataset statistics. It never
raises for bad data: problems come back as ``Prepared.error`` so the main process can
apply the ``drop_corrupt`` policy in a deterministic order.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from fastdata.convert.sources import Item
from fastdata.shards.writer import encode_value

Image.MAX_IMAGE_PIXELS = None  # large photographs are legitimate input


@dataclass(frozen=True)
class PrepareOptions:
    """Options that change what is stored (and so are part of the resume fingerprint).

    Attributes:
        max_side: re-encode images whose longer side exceeds this, shrunk to it.
        quality: JPEG quality of re-encoded images; setting it re-encodes every image.
        raw: store decoded uint8 HWC RGB pixels as ``.npy`` instead of compressed bytes.
        check_decode: decode every image fully (needed to detect truncated files).
        digest: compute a content digest of every sample (for de-duplication).
        ship_bytes: return stored-as-is file contents in ``fields``; when False (worker
            processes), such a field holds None and the writing process reads the file
            itself, which costs less than sending the bytes through a pipe.
    """

    max_side: int | None = None
    quality: int | None = None
    raw: bool = False
    check_decode: bool = False
    digest: bool = False
    ship_bytes: bool = True

    @property
    def reencode(self) -> bool:
        return self.max_side is not None or self.quality is not None

    @property
    def decodes_all(self) -> bool:
        """Whether every image is decoded (otherwise only the statistics sample is)."""
        return self.check_decode or self.reencode or self.raw


@dataclass
class Prepared:
    """The result of preparing one item."""

    ordinal: int
    fields: dict[str, bytes] | None = None
    digest: str = ""
    size: tuple[int, int] = (0, 0)
    pixel_sums: tuple[np.ndarray, np.ndarray, int] | None = None
    error: str | None = None


_SOURCE = None
_OPTIONS = PrepareOptions()


def init_worker(source, options: PrepareOptions) -> None:
    """Pool initializer: keeps the source and options in the worker process."""
    global _SOURCE, _OPTIONS
    _SOURCE, _OPTIONS = source, options


def prepare_task(task: tuple[int, Item, bool]) -> Prepared:
    """Pool entry point: ``(ordinal, item, with_stats)`` → ``Prepared``."""
    ordinal, item, with_stats = task
    return prepare_item(_SOURCE, item, ordinal, _OPTIONS, with_stats)


def prepare_item(source, item: Item, ordinal: int, options: PrepareOptions, with_stats: bool) -> Prepared:
    """Reads, checks and encodes one item; errors come back in ``Prepared.error``."""
    try:
        ext, payload = source.read(item)
    except OSError as exc:
        return Prepared(ordinal, error=f"cannot read: {exc.strerror or exc}")
    try:
        if isinstance(payload, np.ndarray):
            result = _prepare_array(payload, options, with_stats)
        else:
            result = _prepare_bytes(ext, payload, options, with_stats)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        return Prepared(ordinal, error=f"not a readable image: {exc}")
    result.ordinal = ordinal
    if item.label is not None:
        result.fields["cls"] = encode_value(item.key, "cls", item.label)
    return result


def digest_item(source, item: Item) -> str | None:
    """The content digest of one item as ``--dedupe`` compares it; None if it cannot be read."""
    try:
        _, payload = source.read(item)
    except OSError:
        return None
    return _content_digest(payload)


def digest_task(item: Item) -> str | None:
    """Pool entry point of ``digest_item`` (the source is the one ``init_worker`` kept)."""
    return digest_item(_SOURCE, item)


def _content_digest(payload: bytes | np.ndarray) -> str:
    if isinstance(payload, np.ndarray):
        payload = repr(payload.shape).encode() + payload.tobytes()
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _digest(data: bytes | np.ndarray, options: PrepareOptions) -> str:
    return _content_digest(data) if options.digest else ""


def _prepare_array(image: np.ndarray, options: PrepareOptions, with_stats: bool) -> Prepared:
    digest = _digest(image, options)
    height, width = image.shape[:2]
    if options.reencode:
        pil = _resize(_to_rgb(Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)), options)
        fields = {"jpg": _encode_jpeg(pil, options.quality)}
        width, height = pil.size
    else:
        fields = {"npy": encode_value("", "npy", np.ascontiguousarray(image))}
    sums = _pixel_sums(image) if with_stats else None
    return Prepared(0, fields, digest, (width, height), sums)


def _prepare_bytes(ext: str, data: bytes, options: PrepareOptions, with_stats: bool) -> Prepared:
    digest = _digest(data, options)
    transform = options.reencode or options.raw
    if not transform and simplejpeg.is_jpeg(data):
        try:
            return _prepare_jpeg(ext, data, digest, options, with_stats)
        except ValueError:
            pass  # a JPEG flavour libjpeg-turbo's RGB path rejects (CMYK...): Pillow decides
    pil = Image.open(io.BytesIO(data))
    size = pil.size
    if not (options.check_decode or transform or with_stats):
        return Prepared(0, _as_is(ext, data, options), digest, size)
    pil.load()
    rgb = _to_rgb(pil)
    sums = _pixel_sums(np.asarray(rgb)) if with_stats else None
    if transform:
        rgb = _resize(rgb, options)
        size = rgb.size
        stored = {"npy": encode_value("", "npy", np.asarray(rgb))} if options.raw else {
            "jpg": _encode_jpeg(rgb, options.quality)
        }
        return Prepared(0, stored, digest, size, sums)
    return Prepared(0, _as_is(ext, data, options), digest, size, sums)


def _as_is(ext: str, data: bytes, options: PrepareOptions) -> dict[str, bytes | None]:
    return {ext: data if options.ship_bytes else None}


def _prepare_jpeg(ext: str, data: bytes, digest: str, options: PrepareOptions, with_stats: bool) -> Prepared:
    """JPEG stored as it is: header and decoding through libjpeg-turbo (simplejpeg), which
    is several times faster than Pillow's Python-level marker parsing."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    sums = None
    if options.check_decode or with_stats:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        sums = _pixel_sums(pixels) if with_stats else None
    return Prepared(0, _as_is(ext, data, options), digest, (width, height), sums)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize(image: Image.Image, options: PrepareOptions) -> Image.Image:
    side = options.max_side
    width, height = image.size
    if side is None or max(width, height) <= side:
        return image
    scale = side / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode_jpeg(image: Image.Image, quality: int | None) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality or 90)
    return out.getvalue()


_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.uint16)
_VALUES = np.arange(256, dtype=np.float64) / 255.0


def _pixel_sums(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel sums of values and squared values in [0, 1], from a per-channel
    histogram of the uint8 values (exact, and one fast pass over the pixels)."""
    pixels = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)[:, :3]
    if pixels.shape[1] == 1:
        pixels = np.repeat(pixels, 3, axis=1)
    hist = np.bincount((pixels + _CHANNEL_OFFSETS).ravel(), minlength=768).reshape(3, 256)
    return hist @ _VALUES, hist @ (_VALUES * _VALUES), pixels.shape[0]
