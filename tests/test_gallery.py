"""fastdata show / stats on tiny shards: numbers against float64 NumPy, valid PNGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fastdata import ShardWriter
from fastdata.cli import main
from fastdata.pictures.gallery import compute_stats


def png_bytes(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def make_shards(tmp_path, rng):
    images = [rng.integers(0, 256, (int(rng.integers(8, 30)), int(rng.integers(8, 30)), 3), dtype=np.uint8)
              for _ in range(12)]
    with ShardWriter(str(tmp_path / "g-%02d.tar"), maxcount=5) as sink:
        for i, image in enumerate(images):
            field = {"png": png_bytes(image)} if i % 2 else {"npy": image}
            sink.write({"__key__": f"s{i:02d}", **field, "cls": i % 3})
    return images, str(tmp_path / "g-{00..02}.tar")


def test_stats_match_float64_numpy(tmp_path):
    rng = np.random.default_rng(7)
    images, pattern = make_shards(tmp_path, rng)
    stats = compute_stats([pattern.replace("{00..02}", f"{i:02d}") for i in range(3)], limit=100)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=1e-9)
    assert stats["class_counts"] == {0: 4, 1: 4, 2: 4}
    assert stats["widths"] == [im.shape[1] for im in images]
    assert stats["channel_hist"].sum() == pixels.size


def test_show_and_stats_commands_write_pngs(tmp_path, capsys):
    _, pattern = make_shards(tmp_path, np.random.default_rng(8))
    sheet, plot = tmp_path / "sheet.png", tmp_path / "stats.png"
    assert main(["show", pattern, "-n", "6", "--size", "16", "--augment", "-o", str(sheet)]) == 0
    assert main(["stats", pattern, "-o", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "Normalize(mean=[" in out and "images: 12" in out
    for path in (sheet, plot):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.getextrema() != ((255, 255),) * 3
    assert main(["stats", str(tmp_path / "missing-{0..1}.tar"), "-o", str(plot)]) == 1
