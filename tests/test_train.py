"""Tests of the minimal trainer (fastdata.train.loop), its checkpoints and ``fastdata train``."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastdata.errors import FastdataError, SourceError
from fastdata.train.command import register
from fastdata.train.feed import to_model_input
from fastdata.train.loop import fit, make_loaders
from fastdata.train.metrics import evaluate

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def separable(n: int, seed: int, classes: int = 4) -> TensorDataset:
    """Noisy images whose class is a bright patch at a class-specific place and channel."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, 12, 12, generator=g)
    for c in range(classes):
        x[y == c, c % 3, (c // 3) * 6 : (c // 3) * 6 + 6, :] += 1.5
    return TensorDataset(x, y)


def tiny_cnn(classes: int = 4, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(32, classes),
    )  # fmt: skip


def test_fit_learns_and_reports():
    torch.manual_seed(0)
    train = DataLoader(separable(384, 1), batch_size=32, shuffle=True)
    val = DataLoader(separable(200, 2), batch_size=50)
    model = tiny_cnn()
    before = evaluate(model, val)
    result = fit(model, train, val_loader=val, epochs=3, lr=0.05, log_every=4, progress=False)
    assert before.accuracy < 0.5  # chance is 0.25
    assert result.report.accuracy > 0.85 and result.history[-1]["val_accuracy"] > 0.85
    assert result.steps[0]["loss"] > 2 * result.steps[-1]["loss"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(h["samples"] == 384 for h in result.history)
    assert 0 <= result.data_wait_share < 1 and result.samples_per_sec > 0
    # The learning rate follows the cosine schedule, one value per epoch.
    lrs = [h["lr"] for h in result.history]
    np.testing.assert_allclose(lrs, [0.05 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)])


def test_evaluate_matches_sklearn_on_the_model_predictions():
    torch.manual_seed(1)
    data = separable(90, 3)
    model = tiny_cnn()
    report = evaluate(model, DataLoader(data, batch_size=16))
    model.eval()
    with torch.no_grad():
        logits = model(data.tensors[0])
    pred, true = logits.argmax(1).numpy(), data.tensors[1].numpy()
    np.testing.assert_array_equal(
        report.confusion, sklearn_metrics.confusion_matrix(true, pred, labels=range(4))
    )
    assert report.macro_f1 == pytest.approx(
        sklearn_metrics.f1_score(true, pred, labels=range(4), average="macro", zero_division=0)
    )
    assert report.loss == pytest.approx(
        nn.functional.cross_entropy(logits, data.tensors[1]).item(), rel=1e-5
    )


def test_steps_per_epoch_and_plain_lists():
    batches = [(torch.randn(4, 3, 12, 12), torch.randint(0, 4, (4,))) for _ in range(5)]
    result = fit(tiny_cnn(), batches, epochs=2, steps_per_epoch=3, progress=False)
    assert [h["samples"] for h in result.history] == [12, 12]
    assert result.report is None


class _StatefulLoader:
    """A DataLoader with ``state_dict`` / ``load_state_dict``; can simulate a killed run."""

    def __init__(self, loader: DataLoader, die_in_epoch: int | None = None) -> None:
        self.loader, self.epochs, self.loaded, self.die_in_epoch = loader, 0, None, die_in_epoch

    def __iter__(self):
        self.epochs += 1
        if self.epochs == self.die_in_epoch:
            raise KeyboardInterrupt  # the run is killed at the start of this epoch
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state
        self.epochs = state["epochs"]


def test_resume_continues_exactly(tmp_path):
    """Training 3 epochs equals training until killed in epoch 2, then resuming."""
    data, val = separable(96, 4), DataLoader(separable(40, 5), batch_size=20)

    def run(ckpt_dir, resume=None, die_in_epoch=None):
        torch.manual_seed(7)  # same initial weights
        model = tiny_cnn(dropout=0.3)  # dropout consumes random numbers too
        loader = _StatefulLoader(DataLoader(data, batch_size=16, shuffle=True), die_in_epoch)
        if resume:
            torch.manual_seed(12345)  # a different global state, which resume must replace
        result = fit(model, loader, val_loader=val, epochs=3, lr=0.05, seed=3,
                     checkpoint_dir=ckpt_dir, resume=resume, progress=False)  # fmt: skip
        return model, loader, result

    full_model, _, full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part", die_in_epoch=2)
    part_model, part_loader, part = run(tmp_path / "part2", resume=tmp_path / "part" / "last.pt")
    assert part_loader.loaded == {"epochs": 1} and part_loader.epochs == 3
    full_state, part_state = full_model.state_dict(), part_model.state_dict()
    for name, tensor in full_state.items():
        assert torch.equal(tensor, part_state[name]), name
    keys = ("train_loss", "val_accuracy", "lr", "val_loss")
    assert [[h[k] for k in keys] for h in part.history] == [
        [h[k] for k in keys] for h in full.history
    ]
    # The checkpoint holds everything listed in NOTE [ Exact resume ].
    state = torch.load(tmp_path / "part2" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "scaler", "loader", "random"} <= set(state)


def test_resume_rejects_a_weights_file(tmp_path):
    model = tiny_cnn()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(SourceError, match="not a training checkpoint"):
        fit(model, [], epochs=1, resume=tmp_path / "w.pt", progress=False)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_uint8_batches_are_normalised_on_the_device(layout):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 3, 5, 7), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    batch = torch.from_numpy(pixels if layout == "nchw" else pixels.transpose(0, 2, 3, 1).copy())
    out = to_model_input(batch, torch.device("cpu"), channels_last=True, normalize=(mean, std))
    expected = (pixels / 255.0 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_empty_validation_loader_and_bad_batches_are_errors():
    with pytest.raises(FastdataError, match="no batch"):
        evaluate(tiny_cnn(), [])
    with pytest.raises(FastdataError, match=r"\(images, labels\) pair, got dict"):
        fit(tiny_cnn(), [{"jpg": torch.zeros(1, 3, 8, 8)}], progress=False)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from fastdata.tools.sample_data import make_image_folder

    root = tmp_path_factory.mktemp("images")
    make_image_folder(
        root, n_per_class=10, size_range=(48, 64), classes=("coins", "coffee", "rocket")
    )
    return root


def test_make_loaders_reads_an_image_folder(image_folder):
    train, val, classes = make_loaders(image_folder, batch_size=4, image_size=32, workers=0)
    assert classes == ["coffee", "coins", "rocket"]
    assert len(train.dataset) + len(val.dataset) == 30 and len(val.dataset) == 3
    images, labels = next(iter(train))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    # The validation images are the centre crop of the files, as torchvision computes it.
    index = val.dataset.indices[0]
    path, label = val.dataset.dataset.samples[index]
    from torchvision.transforms import functional as TF

    expected = TF.pil_to_tensor(TF.center_crop(TF.resize(Image.open(path).convert("RGB"), 37), 32))
    assert torch.equal(val.dataset[0][0], expected) and val.dataset[0][1] == label
    with pytest.raises(SourceError, match="image folder"):
        make_loaders(image_folder / "missing")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_trains_resumes_and_searches(image_folder, tmp_path, capsys):
    common = [str(image_folder), "--batch-size", "4", "--image-size", "32", "--workers", "0",
              "--no-progress", "--lr", "0.01", "--steps-per-epoch", "2",
              "--out", str(tmp_path / "run")]  # fmt: skip
    assert _cli(["train", *common, "--epochs", "1", "--model", "resnet18"]) == 0
    for name in ("history.json", "metrics.json", "checkpoints/last.pt"):
        assert (tmp_path / "run" / name).is_file()
    for name in ("training.png", "confusion.png"):
        with Image.open(tmp_path / "run" / name) as image:
            assert image.format == "PNG" and image.width > 300
    assert "macro avg" in capsys.readouterr().out
    assert _cli(["train", *common, "--epochs", "2", "--resume"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history["epochs"]] == [1, 2]
    # Fine-tune from the training checkpoint: only the head trains.
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    tuned = [*common[:-1], str(tmp_path / "ft"), "--checkpoint", ckpt, "--freeze-backbone"]
    assert _cli(["train", *tuned, "--epochs", "1"]) == 0
    before = torch.load(ckpt, weights_only=True)["model"]
    after = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    grid = ["--grid", "lr=0.1,0.01", "--epochs", "1"]
    assert _cli(["train", *common, *grid]) == 0
    rows = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert sorted(r["lr"] for r in rows) == [0.01, 0.1]
    assert "| lr | val_accuracy |" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda_with_amp_and_channels_last():
    torch.manual_seed(0)
    pixels = (torch.rand(256, 12, 12, 3) * 80).to(torch.uint8)  # uint8 NHWC, as loaders yield
    labels = torch.randint(0, 4, (256,))
    for c in range(4):
        pixels[labels == c, (c // 2) * 6 : (c // 2) * 6 + 6, :, c % 3] += 150
    loader = DataLoader(TensorDataset(pixels, labels), batch_size=32, shuffle=True, pin_memory=True)
    model = tiny_cnn()
    result = fit(model, loader, val_loader=loader, epochs=4, lr=0.05, device="cuda",
                 normalize=((0.5,) * 3, (0.25,) * 3), progress=False)  # fmt: skip
    assert next(model.parameters()).is_cuda
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert result.report.accuracy > 0.85


def test_distributed_sampler_gets_the_epoch():
    from torch.utils.data.distributed import DistributedSampler

    data = separable(32, 6)
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    result = fit(tiny_cnn(), loader, epochs=3, progress=False)
    assert sampler.epoch == 2
    assert [h["samples"] for h in result.history] == [16, 16, 16]


def test_resume_with_more_epochs_stretches_the_schedule(tmp_path):
    """Resuming a 2-epoch run with epochs=4 trains epochs 3 and 4 at the learning rates an
    uninterrupted 4-epoch run uses (as the README promises), not at the old schedule's end."""
    data = DataLoader(separable(32, 6), batch_size=16)

    def lrs(epochs, **kw):
        torch.manual_seed(0)
        result = fit(tiny_cnn(), data, epochs=epochs, lr=0.05, progress=False, **kw)
        return [h["lr"] for h in result.history]

    straight = lrs(4)
    lrs(2, checkpoint_dir=tmp_path)
    resumed = lrs(4, resume=tmp_path / "last.pt", checkpoint_dir=tmp_path)
    # Reference: torch's own cosine schedule over 4 epochs (T_max=4, eta_min=0).
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    reference = []
    for _ in range(4):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    np.testing.assert_allclose(straight, reference, atol=1e-12)
    np.testing.assert_allclose(resumed[2:], reference[2:], atol=1e-12)


@pytest.mark.parametrize(
    "extra, argument",
    [(["--batch-size", "0"], "--batch-size"), (["--image-size", "0"], "--image-size"),
     (["--workers", "-1"], "--workers"), (["--epochs", "-1"], "--epochs"),
     (["--lr", "abc"], "--lr")],
)  # fmt: skip
def test_cli_refuses_bad_numbers_naming_the_argument(image_folder, tmp_path, capsys, extra, argument):
    with pytest.raises(SystemExit) as exit_info:
        _cli(["train", str(image_folder), "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and argument in err and "Traceback" not in err


def _cli_error(argv: list[str], capsys) -> str:
    assert _cli(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastdata train: error:"), captured.err
    return lines[0]


def test_cli_errors_are_one_line(image_folder, tmp_path, capsys):
    common = ["--batch-size", "4", "--image-size", "32", "--workers", "0", "--no-progress",
              "--steps-per-epoch", "1", "--epochs", "1"]  # fmt: skip
    run = ["train", str(image_folder), *common, "--out", str(tmp_path / "run")]
    assert "nosuchnet" in _cli_error([*run, "--model", "nosuchnet"], capsys)
    assert "--resume" in _cli_error([*run, "--resume"], capsys)
    assert "--checkpoint" in _cli_error([*run, "--checkpoint", str(tmp_path / "no.pt")], capsys)
    assert "missing" in _cli_error(["train", str(tmp_path / "missing"), *common], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no images" in _cli_error(["train", str(tmp_path / "empty"), *common], capsys)
    assert "lr: 'abc' is not a number" in _cli_error([*run, "--grid", "lr=abc"], capsys)
    # A checkpoint of another architecture, for fine-tuning and for resuming.
    assert _cli([*run, "--model", "resnet18"]) == 0
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.pt")
    assert "another architecture" in _cli_error(
        ["train", str(image_folder), *common, "--out", str(tmp_path / "ft"),
         "--model", "mobilenet_v3_small", "--checkpoint", ckpt], capsys)  # fmt: skip
    resumed = [*run, "--epochs", "2", "--resume", "--model", "resnet34"]
    assert "does not fit" in _cli_error(resumed, capsys)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        _cli(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 64)" in out and "(default: resnet18)" in out


def test_folder_and_shards_train_on_every_sample(image_folder):
    """An epoch from a folder uses every training sample, as one from shards does (only a
    last batch of a single sample is dropped, for BatchNorm)."""
    train, _, _ = make_loaders(image_folder, batch_size=4, image_size=32, workers=0)
    assert sum(len(labels) for _, labels in train) == len(train.dataset) == 27
    train, _, _ = make_loaders(image_folder, batch_size=13, image_size=32, workers=0)
    assert sum(len(labels) for _, labels in train) == 26  # 27 = 2 * 13 + 1
