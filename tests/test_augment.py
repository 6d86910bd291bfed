"""The AutoAugment family, RandomErasing and MixUp/CutMix against torchvision's."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fastdata import transforms as FT
from fastdata.transforms.autoaugment import IMAGENET_POLICY
from fastdata.transforms.kernels.augment import OPS, apply_op
from fastdata.transforms.mix import BatchMix, CutMix, MixUp

# (operation, magnitudes) with magnitudes from the bins the three policies use
CASES = [
    ("ShearX", [0.3, -0.99, 0.5]), ("ShearY", [0.2, -0.7]), ("TranslateX", [32.0, -14.0, 3.9]),
    ("TranslateY", [-32.0, 21.0]), ("Rotate", [30.0, -135.0, 90.0, -90.0, 180.0, 4.5]),
    ("Brightness", [0.5, -0.99]), ("Color", [0.9, -0.4]), ("Contrast", [0.33, -0.99]),
    ("Sharpness", [0.9, -0.7]), ("Posterize", [2.0, 5.0, 8.0]), ("Solarize", [0.0, 0.4, 1.0]),
    ("AutoContrast", [0.0]), ("Equalize", [0.0]), ("Invert", [0.0]), ("Identity", [0.0]),
]  # fmt: skip


@pytest.mark.parametrize("op,magnitudes", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("shape", [(48, 48), (31, 45)])
def test_operation_matches_torchvision_pixels(op, magnitudes, shape):
    rng = np.random.default_rng(abs(hash((op, shape))) % 2**32)
    reference = v2.TrivialAugmentWide()  # any v2 AutoAugment applies torchvision's functional ops
    for magnitude in magnitudes:
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        if op in ("AutoContrast", "Equalize"):  # a narrow range, so that they change it
            img = rng.integers(40, 90, (*shape, 3), dtype=np.uint8)
        chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        expected = reference._apply_image_or_video_transform(
            chw, op, magnitude, interpolation=v2.InterpolationMode.NEAREST, fill=reference._fill
        )
        ours = img.copy()
        apply_op(ours, OPS.index(op), magnitude, np.zeros(3, np.uint8), np.empty_like(ours))
        diff = np.abs(ours.astype(int) - expected.permute(1, 2, 0).numpy().astype(int))
        assert diff.max() <= 2, (op, magnitude, diff.max())


@pytest.mark.parametrize("op", ["Brightness", "Color", "Contrast", "Sharpness"])
def test_blend_operations_round_like_torch(op):
    """The blends take torch's ``1.0 - ratio`` in double precision and its fused
    multiply-adds, so they agree to the pixel (AugMix chains amplify any one-level slip:
    a later Solarize or Posterize turns it into a large one)."""
    rng, reference = np.random.default_rng(12), v2.TrivialAugmentWide()
    for magnitude in (-0.9, -0.2, 0.2, 0.9):
        img = rng.integers(0, 256, (29, 38, 3), dtype=np.uint8)
        chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        expected = reference._apply_image_or_video_transform(
            chw, op, magnitude, interpolation=v2.InterpolationMode.NEAREST, fill=reference._fill
        ).permute(1, 2, 0).numpy()
        ours = img.copy()
        apply_op(ours, OPS.index(op), magnitude, np.zeros(3, np.uint8), np.empty_like(ours))
        diff = np.abs(ours.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (op, magnitude, (diff > 0).mean())


def test_geometric_fill_matches_torchvision():
    img = np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    fill = [10, 200, 30]
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    expected = F.affine(chw, angle=0.0, translate=[0, 0], scale=1.0, shear=[30.0, 0.0],
                        interpolation=v2.InterpolationMode.NEAREST, fill=fill, center=[0, 0])  # fmt: skip
    ours = img.copy()
    apply_op(ours, OPS.index("ShearX"), float(np.tan(np.radians(30.0))), np.array(fill, np.uint8), np.empty_like(img))
    assert (ours == expected.permute(1, 2, 0).numpy()).mean() > 0.999


GEOMETRIC = [
    ("ShearX", [0.3, -0.99, 0.05]), ("ShearY", [0.2, -0.7]), ("TranslateX", [32.0, -14.0, 3.9]),
    ("TranslateY", [-32.0, 21.0]), ("Rotate", [30.0, -135.0, 4.5, -17.3, 180.0]),
]  # fmt: skip


@pytest.mark.parametrize("op,magnitudes", GEOMETRIC, ids=[c[0] for c in GEOMETRIC])
@pytest.mark.parametrize("fill", [None, [10, 200, 30]], ids=["nofill", "fill"])
def test_bilinear_geometric_matches_torchvision_pixels(op, magnitudes, fill):
    """Bilinear ShearX/Y, TranslateX/Y and Rotate against ``v2.functional`` on uint8
    tensors, with torchvision's fill mask (and without a fill: ``None`` is not 0)."""
    from torchvision.transforms.v2._utils import _setup_fill_arg

    rng, reference, worst, exact = np.random.default_rng(abs(hash((op, str(fill)))) % 2**32), v2.TrivialAugmentWide(), 0, []
    ours_fill = np.zeros(0, np.uint8) if fill is None else np.array(fill, np.uint8)
    for shape in ((48, 48), (31, 45)):
        for magnitude in magnitudes:
            img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
            expected = reference._apply_image_or_video_transform(
                chw, op, magnitude, interpolation=v2.InterpolationMode.BILINEAR, fill=_setup_fill_arg(fill)
            ).permute(1, 2, 0).numpy()
            ours = img.copy()
            apply_op(ours, OPS.index(op), magnitude, ours_fill, np.empty_like(ours), bilinear=True)
            diff = np.abs(ours.astype(int) - expected.astype(int))
            worst, exact = max(worst, int(diff.max())), [*exact, (diff == 0).mean()]
    assert worst <= 2 and min(exact) >= 0.999, (op, worst, min(exact))


def test_bilinear_fill_matches_torchvision_v1():
    """v1's blend ``v * mask + (1 - mask) * fill`` (rounded the same way)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F1

    img = np.random.default_rng(4).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    fill = [10.0, 200.0, 30.0]
    expected = F1.rotate(chw, -23.0, interpolation=InterpolationMode.BILINEAR, fill=fill).permute(1, 2, 0).numpy()
    ours = img.copy()
    apply_op(ours, OPS.index("Rotate"), -23.0, np.array(fill, np.uint8), np.empty_like(img), bilinear=True)
    diff = np.abs(ours.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() >= 0.999
    assert (ours != img).mean() > 0.5  # the rotation did happen


@pytest.mark.parametrize("mode", ["bilinear", "BILINEAR", "v1", "v2"])
def test_transforms_accept_bilinear(mode):
    from torchvision.transforms import InterpolationMode as V1Mode

    value = {"v1": V1Mode.BILINEAR, "v2": v2.InterpolationMode.BILINEAR}.get(mode, mode)
    for t in (FT.TrivialAugmentWide(interpolation=value), FT.RandAugment(interpolation=value),
              FT.AutoAugment(interpolation=value), FT.AugMix(interpolation=value)):  # fmt: skip
        assert t.interpolation == "bilinear" and t.fill is None
        t = pickle.loads(pickle.dumps(t))
        assert t.interpolation == "bilinear"
    converted, missing = FT.from_torchvision(v2.AugMix())
    assert not missing and converted.transforms[-1].interpolation == "bilinear"
    assert converted.transforms[-1].fill is None


def test_bilinear_augment_uses_bilinear_kernel():
    """A bilinear TrivialAugmentWide step applies the bilinear op to the pixel."""
    t = FT.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR, fill=[5, 6, 7])
    img = np.random.default_rng(8).integers(0, 256, (33, 40, 3), dtype=np.uint8)
    rng = np.random.default_rng(2)
    while True:
        state = rng.bit_generator.state
        ((op, magnitude),) = t.draw(rng, *img.shape[:2])
        if OPS[op] in ("ShearX", "Rotate") and abs(magnitude) > 0.1:
            break
    rng.bit_generator.state = state
    got = img.copy()
    t.augment(got, rng, np.empty_like(img))
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    expected = v2.TrivialAugmentWide()._apply_image_or_video_transform(
        chw, OPS[op], magnitude, interpolation=v2.InterpolationMode.BILINEAR, fill={"others": [5.0, 6.0, 7.0]}
    ).permute(1, 2, 0).numpy()
    assert (got == expected).mean() >= 0.999


@pytest.mark.parametrize("make", [lambda: v2.AugMix(), lambda: v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)],
                         ids=["AugMix", "TrivialAugmentWide"])  # fmt: skip
def test_bilinear_loader_compiles_and_does_not_depend_on_workers(tmp_path, recwarn, make):
    from PIL import Image
    from torchvision import datasets

    from fastdata import DataLoader

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (30 + i, 36, 3), dtype=np.uint8)).save(tmp_path / f"c{c}" / f"{i}.png")
    tf = v2.Compose([v2.CenterCrop(24), make(), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    ds = datasets.ImageFolder(str(tmp_path), transform=tf)
    runs = []
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=4, compile=True, num_workers=workers, generator=torch.Generator().manual_seed(3))
        assert dl.compiled is not None
        runs.append(torch.cat([x for x, _ in dl]))
    assert not [w for w in recwarn if "could not compile" in str(w.message)]
    assert torch.equal(runs[0], runs[1])
    plain = torch.stack([v2.ToDtype(torch.float32, scale=True)(v2.PILToTensor()(v2.CenterCrop(24)(ds.loader(p)))) for p, _ in ds.samples])
    assert (plain - runs[0]).abs().amax() > 0  # the augmentation did something


@pytest.mark.parametrize(
    "ours,theirs,bins",
    [
        (FT.TrivialAugmentWide(), v2.TrivialAugmentWide(), 31),
        (FT.RandAugment(), v2.RandAugment(), 31),
        (FT.AutoAugment(), v2.AutoAugment(), 10),
    ],
    ids=["trivial", "rand", "auto"],
)
def test_magnitude_bins_are_torchvisions(ours, theirs, bins):
    assert set(ours._space) == set(theirs._AUGMENTATION_SPACE)
    for op, (fn, signed) in theirs._AUGMENTATION_SPACE.items():
        expected = fn(bins, 37, 53)
        got = ours.magnitudes(op, bins, 37, 53)
        assert ours._space[op][1] == signed
        assert (got is None) == (expected is None)
        if got is not None:
            assert got == expected.tolist(), op


def test_imagenet_policy_is_torchvisions():
    assert [tuple(map(tuple, p)) for p in v2.AutoAugment()._policies] == [
        tuple(map(tuple, p)) for p in IMAGENET_POLICY
    ]


def _chi2_uniform(counts) -> float:
    return stats.chisquare(counts).pvalue


def test_trivial_augment_choice_bins_and_sign_are_uniform():
    t, rng, n = FT.TrivialAugmentWide(), np.random.default_rng(0), 30_000
    ops, bins, signs = np.zeros(len(t._space)), np.zeros(31), [0, 0]
    names = list(t._space)
    for _ in range(n):
        ((op, magnitude),) = t.draw(rng, 32, 32)
        name = OPS[op]
        ops[names.index(name)] += 1
        if name == "Rotate":  # bins 0..135 in steps of 4.5
            bins[int(round(abs(magnitude) / 4.5))] += 1
            if magnitude != 0:
                signs[magnitude < 0] += 1
    assert _chi2_uniform(ops) > 1e-3
    assert _chi2_uniform(bins) > 1e-3
    assert stats.binomtest(signs[1], sum(signs), 0.5).pvalue > 1e-3


def test_rand_augment_draws_num_ops_uniform_ops_at_the_fixed_bin():
    t, rng = FT.RandAugment(num_ops=2, magnitude=9), np.random.default_rng(1)
    counts = np.zeros(len(OPS))
    for _ in range(10_000):
        drawn = t.draw(rng, 32, 32)
        assert len(drawn) == 2
        for op, magnitude in drawn:
            counts[op] += 1
            if OPS[op] == "Rotate":
                assert abs(magnitude) == pytest.approx(9.0)
    used = [OPS.index(name) for name in t._space]
    assert _chi2_uniform(counts[used]) > 1e-3 and counts.sum() == counts[used].sum()


def test_auto_augment_applies_each_step_with_its_probability():
    t, rng, n = FT.AutoAugment(policies=[(("Invert", 0.3, None), ("Equalize", 0.8, None))]), np.random.default_rng(2), 20_000
    counts = np.zeros(len(OPS))
    for _ in range(n):
        for op, _ in t.draw(rng, 8, 8):
            counts[op] += 1
    assert stats.binomtest(int(counts[OPS.index("Invert")]), n, 0.3).pvalue > 1e-3
    assert stats.binomtest(int(counts[OPS.index("Equalize")]), n, 0.8).pvalue > 1e-3


def test_random_erasing_box_distribution_matches_torchvision():
    ours, theirs = FT.RandomErasing(p=1.0), v2.RandomErasing(p=1.0)
    rng, img = np.random.default_rng(3), torch.zeros(3, 40, 56)
    torch.manual_seed(3)
    a = [ours.box(rng, 40, 56) for _ in range(4000)]
    b = [theirs.make_params([img]) for _ in range(4000)]
    a_area = [h * w for _, _, h, w in filter(None, a)]
    b_area = [p["h"] * p["w"] for p in b if p["v"] is not None]
    a_ratio = [h / w for _, _, h, w in filter(None, a)]
    b_ratio = [p["h"] / p["w"] for p in b if p["v"] is not None]
    assert stats.ks_2samp(a_area, b_area).pvalue > 1e-3
    assert stats.ks_2samp(a_ratio, b_ratio).pvalue > 1e-3
    assert stats.ks_2samp([t for t, _, _, _ in filter(None, a)], [p["i"] for p in b if p["v"] is not None]).pvalue > 1e-3
    assert abs(len(a_area) - len(b_area)) < 200  # boxes that never fit: same share


def test_random_erasing_on_the_batch_writes_the_value_in_output_units():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    plan = FT.Compose([FT.ToDtype(torch.float32, scale=True), FT.RandomErasing(p=1.0, value=(1.0, 0.0, 0.5)),
                       FT.Normalize(mean, std)]).plan()  # fmt: skip
    images = torch.zeros(2, 3, 20, 30)
    gens = [np.random.default_rng(s) for s in (5, 6)]
    expect = [FT.RandomErasing(p=1.0).box(np.random.default_rng(s), 20, 30) for s in (5, 6)]
    plan.augment_batch(images, lambda i: gens[i])
    for i, box in enumerate(expect):
        top, left, h, w = box
        reference = torch.zeros(3, 20, 30)
        value = (torch.tensor([1.0, 0.0, 0.5]) - torch.tensor(mean)) / torch.tensor(std)
        reference = F.erase(reference, top, left, h, w, value.view(3, 1, 1))
        torch.testing.assert_close(images[i], reference)


def test_mixup_lambda_is_beta_and_pixels_match_torchvision():
    mix, rng = MixUp(0.2), np.random.default_rng(4)
    lams = [mix.params(rng, 8, 8)[0] for _ in range(5000)]
    assert stats.kstest(lams, stats.beta(0.2, 0.2).cdf).pvalue > 1e-3
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])
    lam = MixUp(0.2).params(np.random.default_rng(9), 8, 8)[0]
    got_x, got_y = BatchMix([MixUp(0.2)], 3)(images.clone(), labels, np.random.default_rng(9))
    theirs = v2.MixUp(alpha=0.2, num_classes=3)
    params = {"lam": lam, "labels": labels, "batch_size": 4}
    torch.testing.assert_close(got_x, theirs.transform(images.clone(), params))
    torch.testing.assert_close(got_y, theirs.transform(labels, params))


def test_cutmix_box_distribution_and_pixels_match_torchvision():
    ours, theirs = CutMix(1.0), v2.CutMix(alpha=1.0, num_classes=3)
    rng, img = np.random.default_rng(5), torch.zeros(2, 3, 24, 40)
    torch.manual_seed(5)
    a = [ours.params(rng, 24, 40) for _ in range(4000)]
    b = [theirs.make_params([img]) for _ in range(4000)]
    assert stats.ks_2samp([lam for lam, _ in a], [p["lam_adjusted"] for p in b]).pvalue > 1e-3
    assert stats.ks_2samp([box[0] for _, box in a], [p["box"][0] for p in b]).pvalue > 1e-3
    images, labels = torch.rand(3, 3, 24, 40), torch.tensor([2, 0, 1])
    lam, box = CutMix(1.0).params(np.random.default_rng(11), 24, 40)
    got_x, got_y = BatchMix([CutMix(1.0)], 3)(images.clone(), labels, np.random.default_rng(11))
    params = {"box": box, "lam_adjusted": lam, "labels": labels, "batch_size": 3}
    torch.testing.assert_close(got_x, theirs.transform(images.clone(), params))
    torch.testing.assert_close(got_y, theirs.transform(labels, params))


def test_batch_mix_chooses_by_p():
    mix, rng = BatchMix([MixUp(1.0), CutMix(1.0)], 2, p=[0.25, 0.75]), np.random.default_rng(6)
    picks = [int(rng.choice(2, p=mix.p)) for _ in range(4000)]
    assert stats.binomtest(sum(picks), 4000, 0.75).pvalue > 1e-3


def test_pixel_step_after_geometry_only():
    with pytest.raises(FT.PlanError, match="before TrivialAugmentWide"):
        FT.Compose([FT.TrivialAugmentWide(), FT.RandomResizedCrop(8)]).plan()
    with pytest.raises(ValueError, match="nearest and bilinear"):
        FT.TrivialAugmentWide(interpolation="bicubic")


class _RecordingAugMix(v2.AugMix):
    """torchvision's AugMix, recording its own draws: the Dirichlet samples and each
    chain's (operation, magnitude), a chain starting where the original image comes in."""

    def _sample_dirichlet(self, params):
        out = super()._sample_dirichlet(params)
        self.dirichlet.append(out[0].clone())
        return out

    def _apply_image_or_video_transform(self, image, transform_id, magnitude, **kwargs):
        if image.data_ptr() == self.original.data_ptr():
            self.chains.append([])
        self.chains[-1].append((OPS.index(transform_id), magnitude))
        return super()._apply_image_or_video_transform(image, transform_id, magnitude, **kwargs)

    def __call__(self, image):
        self.dirichlet, self.chains, self.original = [], [], image
        return super().__call__(image)


@pytest.mark.parametrize("kwargs", [{}, {"severity": 10, "chain_depth": 2, "mixture_width": 4, "alpha": 0.5, "fill": [9, 200, 40]},
                                    {"all_ops": False, "severity": 7, "alpha": 2.0}], ids=["default", "wide", "partial"])  # fmt: skip
def test_augmix_matches_torchvision_for_its_own_draws(kwargs):
    theirs = _RecordingAugMix(interpolation=v2.InterpolationMode.NEAREST, **kwargs)
    ours = FT.AugMix(**kwargs)
    rng, worst = np.random.default_rng(7), 0
    for seed in range(12):
        img = rng.integers(0, 256, (29, 38, 3), dtype=np.uint8)
        torch.manual_seed(seed)
        expected = theirs(torch.from_numpy(img).permute(2, 0, 1).contiguous()).permute(1, 2, 0).numpy()
        assert len(theirs.chains) == ours.mixture_width
        got = img.copy()
        ours.mix(got, theirs.dirichlet[0].numpy(), theirs.dirichlet[1].numpy(), theirs.chains, np.empty_like(img))
        worst = max(worst, int(np.abs(got.astype(int) - expected.astype(int)).max()))
    assert worst <= 2


def test_augmix_pickles_and_runs_as_one_step():
    t = pickle.loads(pickle.dumps(FT.AugMix(severity=5, all_ops=False, fill=7)))
    assert (t.severity, t.all_ops, t.fill, len(t._space)) == (5, False, (7, 7, 7), 9)
    img = np.random.default_rng(13).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = FT.Compose([t])(img, rng=np.random.default_rng(1))
    expected = img.copy()
    t.augment(expected, np.random.default_rng(1), np.empty_like(img))
    assert torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1))
    for bad in ({"severity": 0}, {"mixture_width": 0}, {"alpha": 0.0}, {"interpolation": "bicubic"}):
        with pytest.raises(ValueError, match="AugMix|nearest and bilinear"):
            FT.AugMix(**bad)


def test_augmix_mix_truncates_like_torch():
    """The float mix becomes uint8 by truncation (torch's ``.to(uint8)``), not rounding."""
    img = np.full((4, 5, 3), 101, np.uint8)
    m, d = np.array([0.7, 0.3], np.float32), np.array([1.0], np.float32)
    got = img.copy()
    FT.AugMix(mixture_width=1).mix(got, m, d, [[(OPS.index("Invert"), 0.0)]], np.empty_like(img))
    expected = (torch.tensor(0.7) * 101 + torch.tensor(1.0) * torch.tensor(0.3) * 154).to(torch.uint8)
    assert (got == int(expected)).all() and int(expected) == int(0.7 * 101 + 0.3 * 154)  # 116.9 -> 116


def test_augmix_magnitude_bins_are_torchvisions():
    for all_ops in (True, False):
        ours, theirs = FT.AugMix(all_ops=all_ops), v2.AugMix(all_ops=all_ops)
        space = theirs._AUGMENTATION_SPACE if all_ops else theirs._PARTIAL_AUGMENTATION_SPACE
        assert list(ours._space) == list(space)
        for op, (fn, signed) in space.items():
            expected, got = fn(10, 37, 53), ours.magnitudes(op, 37, 53)
            assert ours._space[op][1] == signed and (got is None) == (expected is None)
            if got is not None:
                assert got == expected.tolist(), op


def test_augmix_op_choice_depth_bins_and_signs():
    t, rng, n = FT.AugMix(severity=4), np.random.default_rng(8), 4000
    names = list(t._space)
    ops, depths, bins, signs = np.zeros(len(names)), np.zeros(3), np.zeros(4), [0, 0]
    for _ in range(n):
        for chain in t.draw(rng, 32, 32)[2]:
            depths[len(chain) - 1] += 1
            for op, magnitude in chain:
                ops[names.index(OPS[op])] += 1
                if OPS[op] == "Rotate":  # bins 0, 10/3, 20/3, 10 degrees
                    bins[int(round(abs(magnitude) / (30.0 / 9)))] += 1
                    if magnitude != 0:
                        signs[magnitude < 0] += 1
    assert _chi2_uniform(ops) > 1e-3 and _chi2_uniform(depths) > 1e-3 and _chi2_uniform(bins) > 1e-3
    assert stats.binomtest(signs[1], sum(signs), 0.5).pvalue > 1e-3
    partial = FT.AugMix(all_ops=False, chain_depth=2, mixture_width=2)
    drawn = [op for _ in range(300) for chain in partial.draw(rng, 32, 32)[2] for op, _ in chain]
    assert len(drawn) == 300 * 2 * 2 and {OPS[op] for op in drawn} == set(partial._space)


@pytest.mark.parametrize("alpha,width", [(1.0, 3), (0.4, 5)])
def test_augmix_weights_are_beta_and_dirichlet(alpha, width):
    t, rng, n = FT.AugMix(alpha=alpha, mixture_width=width, chain_depth=1), np.random.default_rng(9), 3000
    draws = [t.draw(rng, 8, 8)[:2] for _ in range(n)]
    m0 = [float(m[0]) for m, _ in draws]
    d0 = [float(d[0]) for _, d in draws]
    assert all(abs(float(m.sum()) - 1) < 1e-5 and abs(float(d.sum()) - 1) < 1e-5 for m, d in draws)
    assert stats.kstest(m0, stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert stats.kstest(d0, stats.beta(alpha, (width - 1) * alpha).cdf).pvalue > 1e-3
    torch.manual_seed(9)  # and torchvision's own sampler
    theirs = torch._sample_dirichlet(torch.full((n, width), alpha))
    assert stats.ks_2samp(d0, theirs[:, 0].numpy()).pvalue > 1e-3
