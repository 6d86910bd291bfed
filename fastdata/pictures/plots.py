"""Pictures as PNG files: contact sheets, dataset statistics, training curves, benchmarks.

Every function draws on its own ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot
state, safe off the main thread), writes ``path`` and returns it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
CHANNEL_COLORS = ("#d62728", "#2ca02c", "#1f77b4")
PathLike = str | os.PathLike


def _styled(function: Callable) -> Callable:
    """Runs a plotting function under ``STYLE`` (rcParams are read when artists are made)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, dpi: int = 100) -> Figure:
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def _save(fig: Figure, path: PathLike, dpi: int = 100) -> str:
    fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return os.fspath(path)


def to_uint8_hwc(
    image, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """Converts an image to an ``(H, W, 3)`` uint8 array for display.

    Args:
        image: a torch tensor or NumPy array, ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``
            (a torch tensor whose first axis has 1, 3 or 4 entries is read as CHW), uint8 or
            float. Floats are in [0, 1], or in [0, 255] when ``mean`` has a value above 1.
        mean, std: per-channel normalisation to undo (``x * std + mean``).
    """
    is_torch = type(image).__module__.startswith("torch")
    array = image.detach().cpu().numpy() if is_torch else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4):
        if is_torch or array.shape[2] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected an image of 2 or 3 dimensions, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if mean is not None and std is not None:
            array = array * np.asarray(std, dtype=np.float64) + np.asarray(mean, dtype=np.float64)
        scale = 1.0 if mean is not None and max(mean) > 1 else 255.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _shrink(array: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None or max(array.shape[:2]) <= max_side:
        return array
    from PIL import Image

    h, w = array.shape[:2]
    ratio = max_side / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR))


@_styled
def contact_sheet(
    images: Sequence,
    keys: Sequence[str],
    labels: Sequence,
    path: PathLike,
    ncols: int = 8,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    max_side: int | None = 224,
    min_text: int = 120,
) -> str:
    """Draws images in a grid, each with its key and label underneath.

    Images are drawn pixel for pixel (no resampling), so the sheet shows exactly what the
    model receives; images larger than ``max_side`` are shrunk first.

    Args:
        images: a batch tensor ``(N, C, H, W)`` or a sequence of images (see ``to_uint8_hwc``).
        keys: sample keys, one per image.
        labels: labels (ints are looked up in ``class_names`` when given).
        path: PNG file to write.
        ncols: images per row.
        mean, std: normalisation to undo for float images.
        class_names: names of integer labels.
        title: title above the grid.
        max_side: longest side of a drawn image; None keeps every image's size.
        min_text: least width in pixels for a key or label (cells of smaller images widen).
    """
    arrays = [_shrink(to_uint8_hwc(im, mean, std), max_side) for im in images]
    if not arrays or len(keys) != len(arrays) or len(labels) != len(arrays):
        raise ValueError(f"need as many keys and labels as images (>0): got {len(arrays)},"
                         f" {len(keys)}, {len(labels)}")  # fmt: skip
    ncols = max(1, min(ncols, len(arrays)))
    nrows = math.ceil(len(arrays) / ncols)
    pad, text_h = 8, 34
    cell_w = max(max(a.shape[1] for a in arrays), min_text) + pad  # small images: room for names
    cell_h = max(a.shape[0] for a in arrays) + text_h + pad
    width = ncols * cell_w + pad
    measure = _TextMeasure()
    # NOTE [ Text that fits ]: texts are measured with the renderer that draws them; a
    # title wider than the sheet wraps onto more lines, a key or label wider than its cell
    # is clipped with an ellipsis (keys keep their end, where they differ; labels their start).
    title_font: dict = {"weight": "bold"}
    title_lines: list[str] = []
    for size in (14, 12, 10, 8):  # the largest size at which no word must be clipped
        title_font["fontsize"] = size
        title_lines = measure.wrap(title, width - 2 * pad, **title_font) if title else []
        if not any("…" in line for line in title_lines):
            break
    title_h = 14 + round(1.6 * title_font["fontsize"]) * len(title_lines) if title_lines else 0
    height = nrows * cell_h + title_h + pad
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    room = cell_w - pad - 2
    for i, array in enumerate(arrays):
        row, col = divmod(i, ncols)
        x0 = pad + col * cell_w
        top = title_h + pad + row * cell_h  # pixels from the top of the figure
        h, w = array.shape[:2]
        fig.figimage(array, xo=x0, yo=height - top - h, origin="upper")
        label = labels[i]
        label = int(label) if hasattr(label, "__int__") and not isinstance(label, str) else label
        if class_names is not None and isinstance(label, int) and 0 <= label < len(class_names):
            label = f"{label}: {class_names[label]}"
        lines = ((keys[i], "normal", True), (str(label), "bold", False))
        for line, (text, weight, keep_end) in enumerate(lines):
            font = {"fontsize": 9, "weight": weight, "family": "DejaVu Sans"}
            fig.text(x0 / width, 1 - (top + h + 3 + 14 * line) / height,
                     measure.clip(str(text), room, keep_end=keep_end, **font),
                     va="top", ha="left", **font)  # fmt: skip
    if title_lines:
        fig.text(0.5, 1 - 10 / height, "\n".join(title_lines), ha="center", va="top",
                 linespacing=1.25, **title_font)  # fmt: skip
    return _save(fig, path)


class _TextMeasure:
    """Measures text in pixels at 100 dpi with the Agg renderer (see NOTE [ Text that fits ])."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import RendererAgg

        self.renderer = RendererAgg(10, 10, 100)

    def width(self, text: str, fontsize: float, weight: str = "normal",
              family: str | None = None) -> float:  # fmt: skip
        from matplotlib.font_manager import FontProperties

        font = FontProperties(size=fontsize, weight=weight, family=family)
        return self.renderer.get_text_width_height_descent(text, font, ismath=False)[0]

    def clip(self, text: str, room: float, *, keep_end: bool, **font) -> str:
        """``text``, or as much of it as fits in ``room`` pixels with an ellipsis."""
        if self.width(text, **font) <= room:
            return text
        for n in range(len(text) - 1, 0, -1):
            short = "…" + text[-n:] if keep_end else text[:n] + "…"
            if self.width(short, **font) <= room:
                return short
        return "…"

    def wrap(self, text: str, room: float, **font) -> list[str]:
        """Greedy word wrap of ``text`` into lines of at most ``room`` pixels (a single
        word wider than that is clipped)."""
        lines: list[str] = []
        for word in text.split():
            if lines and self.width(lines[-1] + " " + word, **font) <= room:
                lines[-1] += " " + word
            else:
                lines.append(word)
        return [self.clip(line, room, keep_end=False, **font) for line in lines]


@_styled
def plot_stats(stats: Mapping, path: PathLike, title: str = "Dataset statistics") -> str:
    """Plots class counts, image sizes and per-channel histograms.

    Args:
        stats: ``class_counts`` (name -> count, or a list of counts), ``widths`` and
            ``heights`` (one per image), and optionally ``channel_hist`` (``(C, 256)``
            counts of pixel values), ``mean`` and ``std`` (per channel, in [0, 1]).
        path: PNG file to write.
        title: the figure's title.
    """
    fig = _figure(16, 4.8)
    axes = fig.subplots(1, 3)
    _plot_class_counts(axes[0], stats["class_counts"])
    _plot_sizes(axes[1], np.asarray(stats["widths"]), np.asarray(stats["heights"]))
    if stats.get("channel_hist") is not None:
        _plot_channels(axes[2], np.asarray(stats["channel_hist"], dtype=np.float64),
                       stats.get("mean"), stats.get("std"))  # fmt: skip
    else:
        axes[2].set_axis_off()
    fig.suptitle(title, fontsize=15, weight="bold")
    return _save(fig, path)


def _plot_class_counts(ax, counts) -> None:
    if isinstance(counts, Mapping):
        names, values = [str(k) for k in counts], list(counts.values())
    else:
        names, values = [str(i) for i in range(len(counts))], list(counts)
    y = np.arange(len(values))
    ax.barh(y, values, color="#4c72b0")
    ax.set_yticks(y, names, fontsize=10 if len(names) <= 20 else 7)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_title(f"Class counts ({sum(values):,} images, {len(values)} classes)")
    ax.grid(axis="y", visible=False)
    if len(values) <= 30:
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {v:,}", va="center", fontsize=9)


def _plot_sizes(ax, widths: np.ndarray, heights: np.ndarray) -> None:
    ax.scatter(widths, heights, s=8, alpha=0.35, color="#4c72b0", edgecolors="none")
    ax.set_xlabel("width (pixels)")
    ax.set_ylabel("height (pixels)")
    ax.set_title(f"Image sizes (median {np.median(widths):.0f} x {np.median(heights):.0f})")
    hi = max(widths.max(), heights.max()) * 1.05 if widths.size else 1
    ax.plot([0, hi], [0, hi], ls="--", lw=1, color="grey", label="square")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.legend(loc="lower right", fontsize=9)


def _plot_channels(ax, hist: np.ndarray, mean, std) -> None:
    density = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    names = ("R", "G", "B") if len(density) == 3 else [f"c{i}" for i in range(len(density))]
    for c, row in enumerate(density):
        label = names[c]
        if mean is not None and std is not None:
            label += f"  mean {mean[c]:.3f}  std {std[c]:.3f}"
        color = CHANNEL_COLORS[c] if len(density) == 3 else None
        ax.fill_between(np.arange(len(row)), row, alpha=0.15, color=color)
        ax.plot(row, color=color, lw=1.5, label=label)
    ax.set_xlim(0, len(density[0]) - 1)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("share of pixels")
    ax.set_title("Per-channel histograms")
    ax.legend(fontsize=9, loc="upper right")


@_styled
def plot_training(
    history: Sequence[Mapping], path: PathLike, steps: Sequence[Mapping] | None = None
) -> str:
    """Plots loss, accuracy and throughput curves of a training run.

    A language model's history (with ``train_perplexity``) gets perplexity instead of
    accuracy in the middle panel and tokens/s for throughput.

    Args:
        history: per-epoch records as in ``fastdata.train.loop.TrainResult.history``.
        path: PNG file to write.
        steps: optional per-log-step records (``epoch``, ``loss``) for a finer loss curve.
    """
    epochs = [h["epoch"] for h in history]
    lm = bool(history) and "train_perplexity" in history[0]
    fig = _figure(16, 4.6)
    loss_ax, acc_ax, speed_ax = fig.subplots(1, 3)
    if steps:
        loss_ax.plot([s["epoch"] for s in steps], [s["loss"] for s in steps], color="#9ecae1",
                     lw=1.2, label="train (per log step)")  # fmt: skip
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", color="#1f77b4", label="train")
    _curve(loss_ax, history, epochs, "val_loss", "validation", "#ff7f0e")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    values = [v for line in loss_ax.get_lines() for v in line.get_ydata() if np.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 30:
        loss_ax.set_yscale("log")  # one early spike would flatten every other point
        loss_ax.set_ylabel("cross-entropy (log scale)")
    if lm:
        _perplexity_panel(acc_ax, history, epochs, steps)
    else:
        acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "o-", color="#1f77b4",
                    label="train accuracy")  # fmt: skip
        _curve(acc_ax, history, epochs, "val_accuracy", "validation accuracy", "#ff7f0e")
        _curve(acc_ax, history, epochs, "val_macro_f1", "validation macro F1", "#2ca02c", "s--")
        acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="score", ylim=(0, 1.02))
        acc_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    unit = "tokens" if lm else "samples"
    bars = speed_ax.bar(epochs, [h[f"{unit}_per_sec"] for h in history], color="#4c72b0",
                        width=0.6, label=f"{unit}/s")  # fmt: skip
    for bar, h in zip(bars, history, strict=True):
        speed_ax.annotate(f"{h['data_wait_share']:.0%} wait", (bar.get_x() + bar.get_width() / 2,
                          bar.get_height()), ha="center", va="bottom", fontsize=9)  # fmt: skip
    speed_ax.set(title="Throughput (label: share of time waiting for data)", xlabel="epoch",
                 ylabel=f"training {unit} / second")  # fmt: skip
    speed_ax.title.set_fontsize(11)
    speed_ax.set_ylim(0, max([h[f"{unit}_per_sec"] for h in history] + [1e-9]) * 1.12)  # room for the labels
    for ax in (loss_ax, acc_ax, speed_ax):
        ax.set_xticks(epochs)
    for ax in (loss_ax, acc_ax):  # below the axes, never over a point
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.suptitle("Training", fontsize=15, weight="bold")
    return _save(fig, path)


def _perplexity_panel(ax, history, epochs, steps) -> None:
    """Perplexity (exp of the loss per token) of a language model, log scale."""
    if steps:
        ax.plot([s["epoch"] for s in steps], [np.exp(min(s["loss"], 700)) for s in steps],
                color="#9ecae1", lw=1.2, label="train (per log step)")  # fmt: skip
    ax.plot(epochs, [h["train_perplexity"] for h in history], "o-", color="#1f77b4", label="train")
    _curve(ax, history, epochs, "val_perplexity", "validation", "#ff7f0e")
    ax.set(title="Perplexity", xlabel="epoch", ylabel="perplexity (log scale)", yscale="log")


def _curve(ax, history, epochs, key, label, color, fmt="o-") -> None:
    values = [h.get(key) for h in history]
    if any(v is not None for v in values):
        ax.plot(epochs, [np.nan if v is None else v for v in values], fmt, color=color, label=label)


@_styled
def plot_confusion(
    matrix, class_names: Sequence[str], path: PathLike, title: str = "Confusion matrix"
) -> str:
    """Draws a confusion matrix (rows true, columns predicted): colour = share of the row,
    text = count.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    side = min(14.0, max(5.0, 0.6 * n + 2.5))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted class", ylabel="true class")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color,
                            fontsize=10 if n <= 15 else 7)  # fmt: skip
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.1%}, {cm.sum():,} samples)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class",
                 format=FuncFormatter(lambda v, _: f"{v:.0%}"))  # fmt: skip
    return _save(fig, path)


@_styled
def plot_throughput(
    results: Sequence[Mapping],
    path: PathLike,
    baseline: str | None = None,
    title: str = "Throughput",
) -> str:
    """Bar chart of samples/sec per candidate, with the ratio to the baseline on each bar.

    Args:
        results: one record per candidate: ``name``, ``samples_per_sec`` (median), and
            optionally ``min`` and ``max`` (drawn as a range) and ``workload`` (one panel
            per workload, in order of first appearance).
        path: PNG file to write.
        baseline: name of the candidate ratios refer to (default: each panel's first).
        title: the figure's title.
    """
    workloads: dict[str, list[Mapping]] = {}
    for r in results:
        workloads.setdefault(str(r.get("workload", "")), []).append(r)
    height = sum(0.55 * len(rs) + 1.3 for rs in workloads.values()) + 0.6
    fig = _figure(10, height)
    axes = fig.subplots(len(workloads), 1, squeeze=False,
                        height_ratios=[len(rs) + 1.5 for rs in workloads.values()])  # fmt: skip
    for ax, (workload, rows) in zip(axes[:, 0], workloads.items(), strict=True):
        _throughput_panel(ax, workload, rows, baseline)
    fig.suptitle(title, fontsize=15, weight="bold")
    return _save(fig, path)


def _throughput_panel(ax, workload: str, rows: Sequence[Mapping], baseline: str | None) -> None:
    names = [str(r["name"]) for r in rows]
    speeds = np.array([float(r["samples_per_sec"]) for r in rows])
    base_index = names.index(baseline) if baseline in names else 0
    base = speeds[base_index]
    y = np.arange(len(rows))
    colors = ["#9e9e9e" if i == base_index else "#4c72b0" for i in range(len(rows))]
    ax.barh(y, speeds, color=colors, height=0.6)
    lo = np.array([float(r.get("min", s)) for r, s in zip(rows, speeds, strict=True)])
    hi = np.array([float(r.get("max", s)) for r, s in zip(rows, speeds, strict=True)])
    ax.errorbar(speeds, y, xerr=[speeds - lo, hi - speeds], fmt="none", ecolor="black",
                capsize=3, lw=1)  # fmt: skip
    for yi, s, h in zip(y, speeds, hi, strict=True):
        ratio = s / base if base else float("nan")
        ax.text(max(s, h), yi, f"  {s:,.0f}/s  ({ratio:.2f}×)", va="center", fontsize=10)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, max(hi.max(), speeds.max()) * 1.35)
    ax.set_xlabel("samples / second (median; whiskers: min to max)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.grid(axis="y", visible=False)
    if workload:
        ax.set_title(workload, loc="left")
