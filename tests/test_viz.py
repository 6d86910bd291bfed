"""Tests of the PNG pictures (fastdata.pictures.plots)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fastdata.pictures import plots as viz

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _open_png(path, min_w=300, min_h=150) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_w and image.height >= min_h
        pixels = np.asarray(image.convert("RGB"))
    # Not blank: a picture has both ink and background.
    assert pixels.std() > 10
    return pixels


def _find(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """True if ``needle`` appears pixel for pixel somewhere in ``haystack``."""
    h, w = needle.shape[:2]
    ys, xs = np.nonzero((haystack[: 1 - h or None, : 1 - w or None] == needle[0, 0]).all(-1))
    return any(
        np.array_equal(haystack[y : y + h, x : x + w], needle) for y, x in zip(ys, xs, strict=True)
    )


def test_contact_sheet_draws_each_image_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(0)
    uint8_chw = torch.from_numpy(rng.integers(0, 256, (3, 40, 52), dtype=np.uint8))
    hwc = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    path = viz.contact_sheet(
        [uint8_chw, hwc, grey], ["k/0", "k/1", "k/2"], [0, 1, 2], tmp_path / "s.png",
        ncols=2, class_names=["a", "b", "c"], title="sheet",
    )  # fmt: skip
    with Image.open(path) as image:
        sheet = np.asarray(image.convert("RGB"))
    assert _find(sheet, uint8_chw.permute(1, 2, 0).numpy())
    assert _find(sheet, hwc)
    assert _find(sheet, np.repeat(grey[:, :, None], 3, axis=2))


def test_contact_sheet_undoes_normalisation(tmp_path):
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (4, 3, 24, 28), dtype=np.uint8)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    batch = (torch.from_numpy(original).double() / 255 - mean) / std
    path = viz.contact_sheet(batch, list("abcd"), [3, 1, 4, 1], tmp_path / "n.png",
                             mean=MEAN, std=STD)  # fmt: skip
    sheet = np.asarray(Image.open(path).convert("RGB"))
    for image in original:
        assert _find(sheet, image.transpose(1, 2, 0))


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 6), w=st.integers(1, 6), channels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16), chw=st.booleans(),
)  # fmt: skip
def test_to_uint8_hwc_round_trip(h, w, channels, seed, chw):
    """Normalised float images come back to the uint8 pixels they were made from."""
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    mean, std = MEAN[:channels], STD[:channels]
    floats = (pixels / 255.0 - np.array(mean)) / np.array(std)
    image = torch.from_numpy(floats.transpose(2, 0, 1)) if chw else floats
    out = viz.to_uint8_hwc(image, mean, std)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(pixels, 3 // channels, axis=2))


def test_contact_sheet_shrinks_big_images_and_checks_lengths(tmp_path):
    big = np.zeros((600, 400, 3), np.uint8)
    big[:, :200] = 255
    viz.contact_sheet([big], ["k"], ["label"], tmp_path / "b.png", max_side=100)
    with Image.open(tmp_path / "b.png") as image:
        assert image.height < 250
    with pytest.raises(ValueError, match="as many keys"):
        viz.contact_sheet([big], ["k", "j"], [0], tmp_path / "x.png")


def test_plot_stats(tmp_path):
    rng = np.random.default_rng(2)
    stats = {
        "class_counts": {"cat": 30, "dog": 12, "fish": 7},
        "widths": rng.integers(200, 500, 49),
        "heights": rng.integers(200, 500, 49),
        "channel_hist": rng.integers(0, 100, (3, 256)),
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.2, 0.2],
    }
    pixels = _open_png(viz.plot_stats(stats, tmp_path / "stats.png"), 1000, 300)
    # The class-count bars are drawn in their colour.
    assert (np.abs(pixels.astype(int) - (0x4C, 0x72, 0xB0)).sum(-1) < 10).sum() > 1000
    viz.plot_stats({**stats, "channel_hist": None, "class_counts": [5, 6]}, tmp_path / "s2.png")
    _open_png(tmp_path / "s2.png", 1000, 300)


def test_plot_training(tmp_path):
    history = [
        {"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.3 * e, "val_loss": 1.1 / e,
         "val_accuracy": 0.25 * e, "val_macro_f1": 0.2 * e, "samples_per_sec": 90.0 + e,
         "data_wait_share": 0.1}
        for e in (1, 2, 3)
    ]  # fmt: skip
    steps = [{"step": i, "epoch": i / 4, "loss": 2.0 / i} for i in range(1, 13)]
    _open_png(viz.plot_training(history, tmp_path / "t.png", steps=steps), 1000, 300)
    no_val = [{k: v for k, v in h.items() if not k.startswith("val")} for h in history]
    _open_png(viz.plot_training(no_val, tmp_path / "t2.png"), 1000, 300)


def test_plot_confusion(tmp_path):
    matrix = np.diag([9, 8, 7]) + 1
    pixels = _open_png(viz.plot_confusion(matrix, ["a", "b", "c"], tmp_path / "c.png"), 400, 400)
    # The diagonal holds most of each row: the darkest blue of the colour map appears.
    assert (pixels[..., 2] > 100).any() and (pixels[..., 0] < 40).any()


def test_plot_throughput(tmp_path):
    results = [
        {"workload": "jpeg 224", "name": "torch", "samples_per_sec": 100, "min": 90, "max": 110},
        {"workload": "jpeg 224", "name": "fastdata", "samples_per_sec": 300},
        {"workload": "32 px", "name": "torch", "samples_per_sec": 5000},
        {"workload": "32 px", "name": "fastdata", "samples_per_sec": 20000},
    ]
    _open_png(viz.plot_throughput(results, tmp_path / "p.png", baseline="torch"), 600, 300)
    _open_png(viz.plot_throughput(results[:2], tmp_path / "p1.png"), 600, 150)


def _drawn_texts(monkeypatch, draw) -> tuple[list, object]:
    """Runs ``draw`` and returns the window extents of its figure's texts and the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = []
    real_save = viz._save
    monkeypatch.setattr(viz, "_save", lambda fig, path, **kw: figures.append(fig) or real_save(fig, path, **kw))
    draw()
    fig = figures[-1]
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()], fig


def test_contact_sheet_texts_fit_their_cells(tmp_path, monkeypatch):
    """Long keys, long class names and a long title stay inside the sheet and never overlap."""
    images = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(6)]
    keys = [f"n0{i}_motorcycle_parts/photo_{i:016d}" for i in range(6)]  # ~40 characters
    names = ["Mmmmmmmmmmmmmmm very wide class name motorcycle"] * 6
    title = "What the model sees: RandomResizedCrop(64) + flip, after the fastdata transforms"
    texts, fig = _drawn_texts(monkeypatch, lambda: viz.contact_sheet(
        images, keys, list(range(6)), tmp_path / "s.png", ncols=3, class_names=names,
        title=title))  # fmt: skip
    width, height = fig.bbox.width, fig.bbox.height
    for text, box in texts:
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, text
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            assert not box_a.overlaps(box_b), (a, b)
    title_text = next(t for t, _ in texts if t.startswith("What"))
    assert title_text.replace("\n", " ") == title  # wrapped, not clipped
    assert any(t.endswith(keys[0][-6:]) and t.startswith("…") for t, _ in texts)  # key keeps its end
    _open_png(tmp_path / "s.png", min_w=150)


def test_training_legends_cover_no_point(tmp_path, monkeypatch):
    """No legend hides a data point (the last epoch's points sat under the legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    history = [
        {"epoch": e, "train_loss": 2.0 - 0.3 * e, "train_accuracy": 0.2 * e, "val_loss": 2.1 - 0.3 * e,
         "val_accuracy": 0.19 * e, "val_macro_f1": 0.18 * e, "samples_per_sec": 90.0 + e,
         "data_wait_share": 0.1}
        for e in (1, 2, 3, 4, 5)
    ]  # fmt: skip
    _, fig = _drawn_texts(monkeypatch, lambda: viz.plot_training(history, tmp_path / "t.png"))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    for ax, legend in legends:
        box = legend.get_window_extent(renderer)
        for line in ax.get_lines():
            points = ax.transData.transform(np.column_stack(line.get_data()))
            inside = [box.contains(x, y) for x, y in points]
            assert not any(inside), (line.get_label(), points[inside])
    _open_png(tmp_path / "t.png", 1000, 300)
