"""The AutoAugment family, RandomErasing and MixUp/CutMix against torchvision's."""

from __future__ import annotations

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


def test_geometric_fill_matches_torchvision():
    img = np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    fill = [10, 200, 30]
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    expected = F.affine(chw, angle=0.0, translate=[0, 0], scale=1.0, shear=[30.0, 0.0],
                        interpolation=v2.InterpolationMode.NEAREST, fill=fill, center=[0, 0])  # fmt: skip
    ours = img.copy()
    apply_op(ours, OPS.index("ShearX"), float(np.tan(np.radians(30.0))), np.array(fill, np.uint8), np.empty_like(img))
    assert (ours == expected.permute(1, 2, 0).numpy()).mean() > 0.999


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
    with pytest.raises(ValueError, match="nearest"):
        FT.TrivialAugmentWide(interpolation="bilinear")
