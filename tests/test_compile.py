"""DataLoader(compile=True) over torchvision image folders, against the uncompiled run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from PIL import Image
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import v2

from fastdata.errors import DecodeError
from fastdata.loading.compile import compile_folder
from fastdata.loading.dataloader import DataLoader
from fastdata.transforms import from_torchvision

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random image (resampling differences stay small, as on photographs)."""
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return np.asarray(img)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """Three classes of JPEGs and PNGs of different sizes."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class{c}").mkdir()
        for i in range(7):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            img = Image.fromarray(smooth_image(rng, h, w))
            if i % 3 == 0:
                img.save(root / f"class{c}" / f"{i}.png")
            else:
                img.save(root / f"class{c}" / f"{i}.jpg", quality=95)
    return str(root)


class Wrapped(tud.Dataset):
    """A user's dataset around an image folder (not compilable: its __getitem__ is its own)."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]


def run(dataset, compile: bool, seed: int = 0, **kwargs) -> list:
    dl = DataLoader(
        dataset, compile=compile, generator=torch.Generator().manual_seed(seed), **kwargs
    )
    return list(dl)


DETERMINISTIC = [
    T.Compose([T.Resize((32, 36)), T.ToTensor(), T.Normalize(MEAN, STD)]),
    T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)]),
    v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(40),
            v2.CenterCrop(32),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    ),
]


@pytest.mark.parametrize(
    "pipeline", DETERMINISTIC, ids=["v1-resize", "v1-resize-crop", "v2-resize-crop"]
)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_deterministic_pipeline_matches_uncompiled(folder, pipeline, num_workers):
    ds = datasets.ImageFolder(folder, transform=pipeline)
    kw = dict(batch_size=5, shuffle=True, num_workers=num_workers)
    compiled = run(ds, True, **kw)
    plain = list(tud.DataLoader(ds, generator=torch.Generator().manual_seed(0), **kw))
    order = torch.randperm(len(ds), generator=_after_base_seed(0)).tolist()
    assert len(compiled) == len(plain) == 5
    for (x, y), (rx, ry) in zip(compiled, plain, strict=True):
        assert isinstance(x, torch.Tensor) and x.dtype == rx.dtype == torch.float32
        assert x.shape == rx.shape and x.is_contiguous()
        assert y.dtype == ry.dtype == torch.int64 and torch.equal(y, ry)
    x, rx = torch.cat([b[0] for b in compiled]), torch.cat([b[0] for b in plain])
    own = from_torchvision(pipeline)[0]  # the same transforms, one sample at a time
    for pos, i in enumerate(order):
        path = ds.samples[i][0]
        with open(path, "rb") as fh:
            torch.testing.assert_close(x[pos], own(fh.read()), atol=1e-5, rtol=0)
        err = (x[pos] - rx[pos]).abs() * torch.tensor(STD).view(3, 1, 1) * 255  # in uint8 steps
        if path.endswith(".png"):  # no DCT-scaled decoding: torchvision parity to rounding
            assert err.max() < 1.01, (path, err.max())
        else:  # see NOTE [ DCT scaling ] in fastdata.decode.images
            assert err.mean() < 3, (path, err.mean())


def _after_base_seed(seed: int) -> torch.Generator:
    """A generator in the state RandomSampler sees: after the loader's base seed draw."""
    gen = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    return gen


def test_output_type_is_that_of_default_collate(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    batch = next(iter(DataLoader(ds, batch_size=4, compile=True)))
    assert type(batch) is type(next(iter(tud.DataLoader(ds, batch_size=4)))) is list
    assert len(batch) == 2


def test_random_augmentations_match_in_distribution(folder):
    pipeline = T.Compose(
        [T.RandomResizedCrop(24), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    ds = datasets.ImageFolder(folder, transform=pipeline)
    torch.manual_seed(0)
    plain = torch.cat([x for x, _ in tud.DataLoader(ds, batch_size=7)] * 1)
    compiled = torch.cat([x for x, _ in DataLoader(ds, batch_size=7, compile=True)])
    assert compiled.shape == plain.shape == (21, 3, 24, 24)
    assert abs(compiled.mean() - plain.mean()) < 0.25
    assert abs(compiled.std() - plain.std()) < 0.25


def test_same_generator_same_batches_new_epoch_new_augmentations(folder):
    pipeline = v2.Compose(
        [v2.RandomResizedCrop(16), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)]
    )
    ds = datasets.ImageFolder(folder, transform=pipeline)
    a = run(ds, True, seed=3, batch_size=8, shuffle=True, num_workers=2)
    b = run(ds, True, seed=3, batch_size=8, shuffle=True, num_workers=1)
    for (x, y), (u, v) in zip(a, b, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    c = run(ds, True, seed=3, batch_size=8, shuffle=True, num_workers=2, worker_mode="processes")
    for (x, y), (u, v) in zip(a, c, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    dl = DataLoader(ds, batch_size=21, compile=True, generator=torch.Generator().manual_seed(3))
    first, second = next(iter(dl))[0], next(iter(dl))[0]
    assert not torch.equal(first, second)


def test_worker_mode_auto_picks_processes_for_small_images(folder):
    small = datasets.ImageFolder(
        folder, transform=T.Compose([T.RandomCrop(32, padding=4), T.ToTensor()])
    )
    large = datasets.ImageFolder(
        folder, transform=T.Compose([T.RandomResizedCrop(224), T.ToTensor()])
    )
    assert DataLoader(small, batch_size=4, num_workers=2, compile=True)._use_processes()
    assert not DataLoader(large, batch_size=4, num_workers=2, compile=True)._use_processes()
    assert not DataLoader(
        small, batch_size=4, num_workers=2, compile=True, worker_mode="threads"
    )._use_processes()
    with pytest.raises(ValueError, match="worker_mode"):
        DataLoader(small, worker_mode="fibers")


def test_shuffle_gives_torchs_index_order_and_really_reorders(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    ours = torch.cat([y for _, y in run(ds, True, seed=9, batch_size=4, shuffle=True)])
    theirs = torch.cat(
        [
            y
            for _, y in tud.DataLoader(
                ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(9)
            )
        ]
    )
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, torch.tensor(ds.targets))


def test_len_drop_last_and_batch_sampler(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    dl = DataLoader(ds, batch_size=4, drop_last=True, compile=True)
    assert len(dl) == 5 and [len(y) for _, y in dl] == [4] * 5
    sampler = tud.BatchSampler(tud.SequentialSampler(ds), 6, drop_last=False)
    dl = DataLoader(ds, batch_sampler=sampler, compile=True)
    assert dl.compiled is not None and [len(y) for _, y in dl] == [6, 6, 6, 3]


def test_target_transform_and_channels_last(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[1], target_transform=lambda t: t * 10)
    x, y = next(
        iter(DataLoader(ds, batch_size=21, compile=True, memory_format=torch.channels_last))
    )
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [t * 10 for t in ds.targets]


@pytest.mark.parametrize(
    "make, needle",
    [
        (
            lambda root: datasets.ImageFolder(
                root, transform=T.Compose([T.Resize((8, 8)), T.GaussianBlur(3), T.ToTensor()])
            ),
            "GaussianBlur",
        ),
        (lambda root: datasets.ImageFolder(root, transform=None), "transform=None"),
        (
            lambda root: datasets.ImageFolder(
                root, transform=T.Compose([T.Resize(8), T.ToTensor()])
            ),
            "the pipeline",
        ),
        (
            lambda root: datasets.ImageFolder(
                root,
                transform=T.Compose([T.Resize((8, 8)), T.ToTensor()]),
                loader=lambda p: Image.open(p).convert("RGB"),
            ),
            "loader=",
        ),
        (
            lambda root: Wrapped(
                datasets.ImageFolder(root, transform=T.Compose([T.Resize((8, 8)), T.ToTensor()]))
            ),
            "dataset Wrapped",
        ),
    ],
    ids=["unsupported-transform", "no-transform", "no-fixed-size", "custom-loader", "wrapped"],
)
def test_unsupported_pieces_are_named_and_fall_back(folder, make, needle):
    ds = make(folder)
    with pytest.warns(UserWarning, match="could not compile") as record:
        dl = DataLoader(ds, batch_size=3, compile=True, collate_fn=None)
    assert needle in str(record[0].message)
    assert dl.compiled is None
    if needle in ("GaussianBlur", "dataset Wrapped"):
        torch.manual_seed(1)
        ours = list(dl)
        torch.manual_seed(1)
        theirs = list(tud.DataLoader(ds, batch_size=3))
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(ours, theirs, strict=True)
        )


def test_custom_collate_or_no_batching_falls_back(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    with pytest.warns(UserWarning, match="collate_fn"):
        DataLoader(ds, batch_size=3, compile=True, collate_fn=lambda b: b)
    with pytest.warns(UserWarning, match="batch_size=None"):
        DataLoader(ds, batch_size=None, compile=True)


@pytest.fixture
def corrupt_folder(tmp_path) -> str:
    rng = np.random.default_rng(1)
    (tmp_path / "a").mkdir()
    for i in range(6):
        Image.fromarray(smooth_image(rng, 40, 40)).save(tmp_path / "a" / f"{i}.jpg")
    (tmp_path / "a" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return str(tmp_path)


def test_corrupt_image_raises_naming_the_file(corrupt_folder):
    ds = datasets.ImageFolder(corrupt_folder, transform=DETERMINISTIC[0])
    with pytest.raises(DecodeError, match="3.jpg"):
        list(DataLoader(ds, batch_size=3, compile=True, num_workers=2))


def test_corrupt_image_is_skipped_and_counted(corrupt_folder):
    ds = datasets.ImageFolder(corrupt_folder, transform=DETERMINISTIC[0])
    dl = DataLoader(ds, batch_size=3, compile=True, num_workers=2, on_error="skip")
    sizes = [len(y) for _, y in dl]
    assert sizes == [3, 3] and dl.stats.skipped == 1 and "3.jpg" in dl.stats.skipped_keys[0]
    assert dl.stats.batches == 2 and dl.stats.samples == 6


def test_persistent_workers_and_early_break(folder):
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    dl = DataLoader(ds, batch_size=4, compile=True, num_workers=2, persistent_workers=True)
    for _ in dl:
        break
    assert [len(y) for _, y in dl] == [4, 4, 4, 4, 4, 1]
    assert [len(y) for _, y in dl] == [4, 4, 4, 4, 4, 1]
    two = DataLoader(ds, batch_size=4, compile=True, num_workers=2)
    it1, it2 = iter(two), iter(two)
    assert torch.equal(next(it1)[1], next(it2)[1])


def test_compile_folder_reports_nothing_missing_for_imagenet_pipeline(folder):
    ds = datasets.ImageFolder(
        folder,
        transform=T.Compose(
            [
                T.RandomResizedCrop(224),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        ),
    )
    compiled, reasons = compile_folder(ds, collate_fn=tud.default_collate)
    assert reasons == [] and compiled.plan.sample_shape == (224, 224, 3)


def _recipe(size: int = 24) -> v2.Compose:
    """torchvision's classification training recipe (references/classification, --auto-augment
    ta_wide --random-erase), at a small size."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size),
            v2.RandomHorizontalFlip(),
            v2.TrivialAugmentWide(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
            v2.RandomErasing(0.5),
        ]
    )


def _mixing_collate(num_classes: int):
    mix = v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=num_classes), v2.CutMix(alpha=1.0, num_classes=num_classes)])

    def collate_fn(batch):
        return mix(*tud.default_collate(batch))

    return collate_fn


def test_full_recipe_compiles_and_does_not_depend_on_workers(folder, recwarn):
    ds = datasets.ImageFolder(folder, transform=_recipe())
    kw = dict(batch_size=5, shuffle=True, collate_fn=_mixing_collate(3))
    runs = [run(ds, True, num_workers=n, **kw) for n in (0, 2)]
    assert not [w for w in recwarn if "could not compile" in str(w.message)]
    dl = DataLoader(ds, compile=True, **kw)
    assert dl.compiled is not None and "TrivialAugmentWide" in repr(dl)
    assert "RandomErasing" in repr(dl) and "MixUp or CutMix (collate_fn)" in repr(dl)
    plain = list(tud.DataLoader(ds, generator=torch.Generator().manual_seed(0), **kw))
    for (x0, y0), (x2, y2), (rx, ry) in zip(*runs, plain, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
        assert x0.shape == rx.shape and y0.shape == ry.shape == (len(y0), 3)
        assert y0.dtype == ry.dtype == torch.float32
        torch.testing.assert_close(y0.sum(1), torch.ones(len(y0)))  # mixed one-hot rows


def test_auto_augment_changes_what_the_geometry_gives(folder):
    base = [v2.RandomResizedCrop(24), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    with_aa = v2.Compose([*base[:1], v2.AutoAugment(), *base[1:]])
    plain = torch.cat([x for x, _ in run(datasets.ImageFolder(folder, transform=v2.Compose(base)), True, batch_size=7)])
    augmented = torch.cat([x for x, _ in run(datasets.ImageFolder(folder, transform=with_aa), True, batch_size=7)])
    changed = (plain - augmented).abs().flatten(1).amax(1) > 0
    assert 0 < changed.float().mean() < 1  # the ImageNet policy leaves some samples alone


def test_subset_and_concat_of_folders_compile_and_match_torch(folder, recwarn):
    full = datasets.ImageFolder(folder, transform=DETERMINISTIC[0], target_transform=lambda y: y + 10)
    other = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    for ds in (tud.Subset(full, [20, 3, 7, 11]), tud.ConcatDataset([full, tud.Subset(other, [1, 2])])):
        ours = run(ds, True, batch_size=4, shuffle=True)
        theirs = list(tud.DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
        for (x, y), (rx, ry) in zip(ours, theirs, strict=True):
            assert torch.equal(y, ry)
            assert (x - rx).abs().mean() < 0.05
    assert not [w for w in recwarn if "could not compile" in str(w.message)]


def test_concat_of_folders_with_different_transforms_falls_back(folder):
    a = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])
    b = datasets.ImageFolder(folder, transform=DETERMINISTIC[1])
    with pytest.warns(UserWarning, match="different transforms"):
        assert DataLoader(tud.ConcatDataset([a, b]), batch_size=4, compile=True).compiled is None


def test_fallback_warning_names_every_reason_and_what_to_change(folder):
    ds = datasets.ImageFolder(
        folder, transform=T.Compose([T.Resize((8, 8)), T.GaussianBlur(3), T.ToTensor()]),
        loader=lambda p: Image.open(p).convert("RGB"),
    )  # fmt: skip
    with pytest.warns(UserWarning, match="could not compile") as record:
        dl = DataLoader(ds, batch_size=3, compile=True, collate_fn=lambda b: b)
    message = str(record[0].message)
    assert "3 reasons" in message
    for needle in ("GaussianBlur", "loader=", "collate_fn", "drop the loader argument", "remove it"):
        assert needle in message, needle
    assert "compiled=False" in repr(dl) and "GaussianBlur" in repr(dl)
    assert len(dl.compile_reasons) == 3


def test_mixing_collate_with_extra_work_is_not_compiled(folder):
    mix = v2.MixUp(alpha=0.2, num_classes=3)
    ds = datasets.ImageFolder(folder, transform=DETERMINISTIC[0])

    def collate_fn(batch):
        x, y = mix(*tud.default_collate(batch))
        return x * 2, y

    with pytest.warns(UserWarning, match="collate_fn='collate_fn'"):
        DataLoader(ds, batch_size=3, compile=True, collate_fn=collate_fn)


def test_image_classification_preset_compiles_and_matches(folder, recwarn):
    from torchvision.transforms._presets import ImageClassification

    preset = ImageClassification(crop_size=32, resize_size=40)
    ds = datasets.ImageFolder(folder, transform=preset)
    ours = run(ds, True, batch_size=7)
    assert not [w for w in recwarn if "could not compile" in str(w.message)]
    theirs = list(tud.DataLoader(ds, batch_size=7))
    for (x, y), (rx, ry) in zip(ours, theirs, strict=True):
        assert torch.equal(y, ry)
        err = (x - rx).abs() * torch.tensor(preset.std).view(1, 3, 1, 1) * 255
        assert err.mean() < 3


def test_augmix_compiles_and_does_not_depend_on_workers(folder, recwarn):
    base = [v2.RandomResizedCrop(24), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    aug = v2.AugMix(interpolation=v2.InterpolationMode.NEAREST)
    ds = datasets.ImageFolder(folder, transform=v2.Compose([base[0], aug, *base[1:]]))
    modes = [{"num_workers": 0}, {"num_workers": 2, "worker_mode": "threads"}, {"num_workers": 2, "worker_mode": "processes"}]
    runs = [torch.cat([x for x, _ in run(ds, True, batch_size=7, **kw)]) for kw in modes]
    assert not [w for w in recwarn if "could not compile" in str(w.message)]
    assert "AugMix" in repr(DataLoader(ds, batch_size=7, compile=True))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    plain = torch.cat([x for x, _ in run(datasets.ImageFolder(folder, transform=v2.Compose(base)), True, batch_size=7)])
    assert ((plain - runs[0]).abs().flatten(1).amax(1) > 0).all()
    bicubic = v2.AugMix(interpolation=v2.InterpolationMode.BICUBIC)
    bicubic = datasets.ImageFolder(folder, transform=v2.Compose([base[0], bicubic, *base[1:]]))
    with pytest.warns(UserWarning, match="AugMix.*nearest and bilinear"):
        assert DataLoader(bicubic, batch_size=7, compile=True).compiled is None
