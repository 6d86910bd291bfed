"""Kernels against the float64 NumPy reference, on fresh random inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata.transforms.kernels import cpu, gpu, normalize_lut, reference, select_backend

FAST = settings(max_examples=40, deadline=None)


def _tables(size, lo, length, n_resized, rows, kind, antialias):
    n = len(rows)
    starts, counts = np.empty(n, np.int32), np.empty(n, np.int32)
    weights = np.zeros((n, cpu.max_taps(length, n_resized, kind, antialias)), np.float32)
    cpu.axis_tables(size, lo, length, n_resized, rows, kind, antialias, starts, counts, weights)
    return starts, counts, weights


def _dense(size, starts, counts, weights):
    mat = np.zeros((len(starts), size))
    for o, (s, c) in enumerate(zip(starts, counts, strict=True)):
        mat[o, s : s + c] = weights[o, :c]
    return mat


@st.composite
def axis_case(draw):
    size = draw(st.integers(1, 300))
    lo = draw(st.integers(0, size - 1))
    length = draw(st.integers(1, size - lo))
    n_resized = draw(st.integers(1, 300))
    kind = draw(st.sampled_from([0, 1, 2]))
    antialias = draw(st.booleans())
    n_out = draw(st.integers(1, 64))
    rows = np.asarray(
        draw(st.lists(st.integers(-1, n_resized - 1), min_size=n_out, max_size=n_out)), np.int32
    )
    return size, float(lo), float(length), n_resized, rows, kind, antialias


@FAST
@given(axis_case())
def test_axis_tables_match_reference_matrix(case):
    size = case[0]
    ours = _dense(size, *_tables(*case))
    ref = reference.axis_matrix(*case)
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    live = case[4] >= 0
    np.testing.assert_allclose(ours[live].sum(1), 1.0, atol=1e-5)  # weights renormalised


@FAST
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    oh=st.integers(1, 48),
    ow=st.integers(1, 48),
    kind=st.sampled_from([0, 1, 2]),
    antialias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    gain=st.sampled_from([1.0, 0.7, 1.3]),
)
def test_resample_matches_reference(h, w, oh, ow, kind, antialias, seed, gain):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    axes = []
    for size, n_out in ((h, oh), (w, ow)):
        lo = int(rng.integers(0, size))
        length = int(rng.integers(1, size - lo + 1))
        n_res = int(rng.integers(1, 2 * n_out + 1))
        rows = rng.integers(-1, n_res, n_out).astype(np.int32)
        axes.append((size, float(lo), float(length), n_res, rows, kind, antialias))
    fill = rng.integers(0, 256, 3).astype(np.uint8)
    out = np.empty((oh, ow, 3), np.uint8)
    cpu.resample_into(src, *_tables(*axes[0]), *_tables(*axes[1]), fill, np.float32(gain), out)
    ref = reference.resample(
        src, reference.axis_matrix(*axes[0]), reference.axis_matrix(*axes[1]), fill, gain
    )
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # float32 vs float64 at .5 ties


@pytest.mark.parametrize("taps", range(1, 11))
def test_column_kernel_matches_the_row_kernel(taps):
    """Filtering whole columns (NOTE [ Horizontal filtering of whole columns ]) against
    filtering along rows, for each tap count, with padded rows and columns."""
    rng = np.random.default_rng(taps)
    src = rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)
    n_out, kind = 20, 1 if taps > 1 else 0
    n_res = 90 if taps == 1 else max(1, round(90 / ((taps - 1) / 2)))
    def x_rows(n_res):
        rows = np.arange(n_out, dtype=np.int32) % n_res
        rows[[3, 11]] = -1  # padded columns
        return rows

    xt = _tables(90, 0.0, 90.0, n_res, x_rows(n_res), kind, True)
    while int(xt[1].max()) < taps and n_res > 1:  # shrink until the table is that wide
        n_res -= 1
        xt = _tables(90, 0.0, 90.0, n_res, x_rows(n_res), kind, True)
    assert int(xt[1].max()) == taps
    y_rows = np.arange(30, dtype=np.int32)
    y_rows[[0, 17]] = -1  # padded rows
    yt = _tables(40, 0.0, 40.0, 30, y_rows, 1, True)
    fill, gain = np.array([1, 2, 3], np.uint8), np.float32(1.0)
    cols, rows = np.empty((30, n_out, 3), np.uint8), np.empty((30, n_out, 3), np.uint8)
    cpu.resample_into(src, *yt, *xt, fill, gain, cols)
    cpu._resample_generic(src, *yt, *xt, fill, gain, rows)
    assert np.abs(cols.astype(int) - rows.astype(int)).max() <= 1
    assert (cols[[0, 17]] == fill).all() and (cols[:, [3, 11]] == fill).all()


NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _check_normalize(backend_fn, n, h, w, dtype, channels_last, seed):
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    mean = rng.uniform(0, 1, 3)
    std = rng.uniform(0.05, 1, 3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, 3, h, w), dtype=dtype, memory_format=fmt)
    backend_fn(torch.from_numpy(batch), normalize_lut(mean, std, 3, dtype), out)
    if dtype == torch.bfloat16:
        ref = torch.from_numpy(reference.normalize(batch, mean, std, np.float64)).to(torch.bfloat16)
        assert torch.equal(out.contiguous(), ref)
        return
    ref = reference.normalize(batch, mean, std, NP_DTYPES[dtype])
    # Bit-identical: the table holds the float64 value rounded once (1e-6 relative is the floor).
    np.testing.assert_array_equal(out.contiguous().numpy(), ref)


@FAST
@given(
    n=st.integers(1, 4),
    h=st.integers(1, 17),
    w=st.integers(1, 17),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_normalize_backends_match_reference(n, h, w, dtype, channels_last, seed):
    _check_normalize(select_backend("cpu").normalize_into, n, h, w, dtype, channels_last, seed)
    _check_normalize(gpu.normalize_into, n, h, w, dtype, channels_last, seed)


def test_select_backend_is_explicit():
    assert select_backend("cpu").name == "numba"
    assert select_backend(None).name == "numba"
    assert select_backend(torch.device("cuda", 0)).name == "torch"
    assert select_backend("meta").name == "torch"


def test_normalize_lut_rejects_bad_arguments():
    with pytest.raises(ValueError):
        normalize_lut([0.5, 0.5], [1, 1], 3, torch.float32)
    with pytest.raises(ValueError):
        normalize_lut([0.5], [0.0], 3, torch.float32)
    with pytest.raises(ValueError):
        normalize_lut([0.5], [1.0], 3, torch.int32)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backend_matches_cpu_backend():
    rng = np.random.default_rng(3)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 19, 23, 3), dtype=np.uint8))
    lut = normalize_lut([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3, torch.float16)
    cpu_out = torch.empty((3, 3, 19, 23), dtype=torch.float16)
    select_backend("cpu").normalize_into(batch, lut, cpu_out)
    gpu_out = torch.empty((3, 3, 19, 23), dtype=torch.float16, device="cuda")
    select_backend("cuda").normalize_into(batch.cuda(), lut.cuda(), gpu_out)
    assert torch.equal(gpu_out.cpu(), cpu_out)
