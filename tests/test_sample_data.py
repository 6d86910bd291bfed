"""Tests of the embedded demo dataset (fastdata.tools.sample_data)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastdata.errors import SourceError
from fastdata.tools.sample_data import (
    DEFAULT_CLASSES,
    PHOTOGRAPHS,
    load_photograph,
    make_image_folder,
    make_splits,
    register,
)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


@pytest.mark.parametrize("name", sorted(PHOTOGRAPHS))
def test_every_photograph_is_bundled_and_rgb(name):
    photo = load_photograph(name)
    assert photo.mode == "RGB"
    assert min(photo.size) >= 256


def test_layout_sizes_and_imagefolder(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    classes = ("astronaut", "camera", "coins")
    info = make_image_folder(
        tmp_path, n_per_class=7, size_range=(120, 160), classes=classes, seed=3
    )
    assert info["num_samples"] == 21 and info["classes"] == list(classes)
    files = sorted(tmp_path.rglob("*"))
    jpgs = [p for p in files if p.is_file()]
    assert len(jpgs) == 21 and all(p.suffix == ".jpg" for p in jpgs)
    for path in jpgs:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            w, h = image.size
            assert 120 <= w <= 160 and round(0.7 * w) - 1 <= h <= round(1.05 * w) + 1
    # torchvision's ImageFolder reads it, one label per photograph.
    folder = torchvision.datasets.ImageFolder(str(tmp_path))
    assert folder.classes == sorted(classes)
    labels = np.bincount([label for _, label in folder.samples])
    assert labels.tolist() == [7, 7, 7]


def test_grey_photographs_become_grey_rgb(tmp_path):
    make_image_folder(tmp_path, n_per_class=3, size_range=(64, 80), classes=("coins",))
    for path in (tmp_path / "coins").iterdir():
        pixels = np.asarray(Image.open(path), dtype=np.int16)
        # JPEG of a grey RGB image keeps the channels within rounding of each other.
        assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 3
        assert np.abs(pixels[..., 2] - pixels[..., 1]).max() <= 3


def test_deterministic_for_seed_whatever_the_threads(tmp_path):
    kwargs = dict(n_per_class=4, size_range=(64, 96), classes=DEFAULT_CLASSES[:4])
    make_image_folder(tmp_path / "a", seed=5, workers=1, **kwargs)
    make_image_folder(tmp_path / "b", seed=5, workers=3, **kwargs)
    make_image_folder(tmp_path / "c", seed=6, **kwargs)
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) == len(a)


def test_views_are_crops_of_their_photograph(tmp_path):
    """Each sample is closer (in mean colour) to its own photograph than to the others."""
    classes = ("chelsea", "coffee", "hubble", "flower")
    make_image_folder(tmp_path, n_per_class=6, size_range=(64, 96), classes=classes)
    means = {n: np.asarray(load_photograph(n), dtype=np.float64).mean((0, 1)) for n in classes}
    hits = 0
    for name in classes:
        for path in (tmp_path / name).iterdir():
            m = np.asarray(Image.open(path), dtype=np.float64).mean((0, 1))
            nearest = min(classes, key=lambda n: np.linalg.norm(means[n] - m))
            hits += nearest == name
    assert hits >= 0.75 * 6 * len(classes)


def test_splits_differ(tmp_path):
    infos = make_splits(
        tmp_path, {"train": 3, "val": 2}, seed=1, size_range=(64, 80), classes=("rocket",)
    )
    assert infos["train"]["num_samples"] == 3 and infos["val"]["num_samples"] == 2
    train = _digests(tmp_path / "train")
    val = _digests(tmp_path / "val")
    assert set(train.values()).isdisjoint(val.values())


def test_errors(tmp_path):
    with pytest.raises(SourceError, match="unknown photograph"):
        make_image_folder(tmp_path, n_per_class=1, classes=("nope",))
    with pytest.raises(ValueError, match="quality"):
        make_image_folder(tmp_path, n_per_class=1, quality=0)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["sample-data", str(tmp_path), "--per-class", "2", "--val-per-class", "1"]
    )
    assert args.func(args) == 0
    assert len(list((tmp_path / "train").rglob("*.jpg"))) == 2 * len(DEFAULT_CLASSES)
    assert len(list((tmp_path / "val").rglob("*.jpg"))) == len(DEFAULT_CLASSES)
    assert "images" in capsys.readouterr().out


def test_readme_convert_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Convert commands, run in order (with fewer images per class), work."""
    import re
    import shlex
    from pathlib import Path

    from fastdata.cli import main

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("### Convert", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(re.sub(r"#.*", "", line)) for line in block.strip().splitlines()]
    assert [c[:2] for c in commands] == [["fastdata", "sample-data"], ["fastdata", "convert"]]
    monkeypatch.chdir(tmp_path)
    small = ["--per-class", "2", "--no-progress"]
    if "--val-per-class" in commands[0]:
        small += ["--val-per-class", "1"]
    assert main([*commands[0][1:], *small]) == 0
    assert main([*commands[1][1:], "--no-progress", "-j", "0"]) == 0
    assert (tmp_path / "shards" / "train.index.json").is_file()
