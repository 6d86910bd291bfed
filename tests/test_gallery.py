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


def test_stats_spread_evenly_over_all_shards(tmp_path, capsys):
    """With a limit below the sample count, stats reads samples from every shard (evenly
    spaced), not the first ones in shard order."""
    rng = np.random.default_rng(9)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) + 0 for _ in range(12)]
    with ShardWriter(str(tmp_path / "e-%02d.tar"), maxcount=4) as sink:
        for i, image in enumerate(images):  # shard k holds class k only
            sink.write({"__key__": f"s{i:02d}", "npy": image, "cls": i // 4})
    urls = [str(tmp_path / f"e-{k:02d}.tar") for k in range(3)]
    stats = compute_stats(urls, limit=6)
    assert stats["class_counts"] == {0: 2, 1: 2, 2: 2} and stats["samples"] == 12
    pixels = np.concatenate([im.reshape(-1, 3) for im in images[::2]]).astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=1e-9)
    assert main(["stats", str(tmp_path / "e-{00..02}.tar"), "--limit", "6", "--no-progress",
                 "-o", str(tmp_path / "s.png")]) == 0  # fmt: skip
    assert "6 of 12 samples, evenly spread over 3 shard(s)" in capsys.readouterr().out


def test_show_and_stats_without_images_say_so(tmp_path, capsys):
    with ShardWriter(str(tmp_path / "t-%02d.tar"), maxcount=5) as sink:
        for i in range(4):
            sink.write({"__key__": f"s{i}", "cls": i, "txt": "hello"})
    pattern = str(tmp_path / "t-00.tar")
    for command in ("show", "stats"):
        assert main([command, pattern, "--no-progress", "-o", str(tmp_path / "x.png")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no images (fields cls, txt" in err, err


def test_show_refuses_zero_samples(tmp_path, capsys):
    import pytest

    _, pattern = make_shards(tmp_path, np.random.default_rng(3))
    with pytest.raises(SystemExit) as info:
        main(["show", pattern, "-n", "0"])
    assert info.value.code == 2 and "-n" in capsys.readouterr().err


def test_show_spreads_its_samples_over_every_shard(tmp_path, monkeypatch):
    import fastdata.pictures.plots as plots

    shown = {}
    monkeypatch.setattr(plots, "contact_sheet", lambda images, keys, labels, path, **kw: shown.update(keys=keys))
    with ShardWriter(str(tmp_path / "v-%02d.tar"), index=False, maxcount=4) as sink:
        for i in range(12):
            sink.write({"__key__": f"s{i:02d}", "npy": np.full((8, 8, 3), i, np.uint8), "cls": i // 4})
    assert main(["show", str(tmp_path / "v-{00..02}.tar"), "-n", "3", "--no-progress", "-o", str(tmp_path / "x.png")]) == 0
    assert shown["keys"] == ["s00", "s04", "s08"]
