"""Tests of the small GPT (fastdata.train.gpt): causality, document isolation, padding, the
classifier head, checkpoints and freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastdata.errors import FastdataError, SourceError
from fastdata.train.gpt import GPT, GPTClassifier, GPTConfig, build_attention_mask, gpt_config_of

CONFIG = GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, seq_len=24)


def model(seed: int = 0, config: GPTConfig = CONFIG) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_tied_head():
    gpt = model()
    assert gpt(tokens(3, 10)).shape == (3, 10, 50)
    assert gpt.lm_head.weight is gpt.wte.weight
    clf = GPTClassifier(CONFIG, num_classes=5).eval()
    assert clf(tokens(3, 10)).shape == (3, 5)
    with pytest.raises(FastdataError, match="seq_len"):
        gpt(tokens(1, 25))


@pytest.mark.parametrize(
    "bad", [{"n_embd": 30, "n_head": 4}, {"n_layer": 0}, {"dropout": 1.0}, {"vocab_size": 2.5}]
)
def test_config_is_checked(bad):
    with pytest.raises(FastdataError):
        GPTConfig(**bad)


def test_causal_a_later_token_never_changes_earlier_logits():
    gpt = model()
    x = tokens(2, 16)
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 50
    with torch.no_grad():
        a, b = gpt(x), gpt(y)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_mask_matches_a_loop_reference():
    g = torch.Generator().manual_seed(3)
    seg = torch.sort(torch.randint(-1, 3, (3, 9), generator=g), dim=1).values.roll(-2, 1)
    pad = torch.rand(3, 9, generator=g) > 0.3
    mask = build_attention_mask(9, torch.device("cpu"), seg, None)[:, 0]
    pmask = build_attention_mask(9, torch.device("cpu"), None, pad)[:, 0]
    for b in range(3):
        for i in range(9):
            for j in range(9):
                assert mask[b, i, j] == (j <= i and seg[b, i] == seg[b, j])
                assert pmask[b, i, j] == (i == j or (j <= i and bool(pad[b, j])))
    assert build_attention_mask(9, torch.device("cpu")) is None


def test_documents_in_a_packed_row_do_not_see_each_other():
    gpt = model()
    doc1, doc2 = tokens(1, 7, seed=2), tokens(1, 10, seed=3)
    row = torch.cat([doc1, doc2], 1)
    segment_ids = torch.tensor([[0] * 7 + [1] * 10], dtype=torch.int32)
    position_ids = torch.tensor([list(range(7)) + list(range(10))])
    with torch.no_grad():
        packed = gpt(row, position_ids=position_ids, segment_ids=segment_ids)
        other = row.clone()
        other[0, :7] = tokens(1, 7, seed=9)
        changed = gpt(other, position_ids=position_ids, segment_ids=segment_ids)
        alone1, alone2 = gpt(doc1), gpt(doc2)
    torch.testing.assert_close(packed[:, 7:], changed[:, 7:])  # doc 1 changed, doc 2 did not
    torch.testing.assert_close(packed[:, 7:], alone2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[:, :7], alone1, rtol=1e-5, atol=1e-5)
    # Without segment ids the second document does see the first.
    with torch.no_grad():
        assert not torch.allclose(gpt(row)[:, 7:], gpt(other)[:, 7:])


def test_padding_left_or_right_gives_the_unpadded_logits():
    gpt = model()
    doc = tokens(1, 6, seed=4)
    pad = torch.zeros(1, 4, dtype=torch.long)
    right = torch.cat([doc, pad], 1)
    left = torch.cat([pad, doc], 1)
    real_right = torch.tensor([[True] * 6 + [False] * 4])
    real_left = real_right.flip(1)
    with torch.no_grad():
        alone = gpt(doc)
        torch.testing.assert_close(gpt(right, attention_mask=real_right)[:, :6], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gpt(left, attention_mask=real_left)[:, 4:], alone, rtol=1e-5, atol=1e-5)
        clf = GPTClassifier(CONFIG, 3).eval()
        expect = clf(doc)
        lengths = torch.tensor([6])
        torch.testing.assert_close(clf(right, attention_mask=real_right, lengths=lengths), expect,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        torch.testing.assert_close(clf(right, lengths=lengths), expect, rtol=1e-5, atol=1e-5)
        mean = GPTClassifier(CONFIG, 3, pool="mean").eval()
        h = mean.gpt.hidden(doc).mean(1)
        torch.testing.assert_close(mean(right, attention_mask=real_right), mean.head(h), rtol=1e-5, atol=1e-5)
        assert torch.isfinite(gpt(left, attention_mask=real_left)).all()


def test_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    gpt = GPT(CONFIG)
    x = tokens(4, 16, seed=5)
    opt = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        logits = gpt(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 50), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.5 * losses[0]


def test_checkpoint_carries_the_config_and_the_backbone_loads(tmp_path):
    gpt = model(seed=7)
    path = tmp_path / "lm.pt"
    torch.save({"model": gpt.state_dict(), "optimizer": {}}, path)
    assert gpt_config_of(path) == CONFIG
    clf = GPTClassifier(gpt_config_of(path), 4)
    clf.load_backbone(path)
    torch.testing.assert_close(clf.gpt.wte.weight, gpt.wte.weight)
    other = GPTClassifier(GPTConfig(vocab_size=50, n_layer=3, n_head=2, n_embd=32, seq_len=24), 4)
    with pytest.raises(SourceError, match="does not fit"):
        other.load_backbone(path)
    torch.save({"w": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(SourceError, match="no GPT"):
        gpt_config_of(tmp_path / "x.pt")


def test_freeze_keeps_the_head_and_the_last_blocks():
    clf = GPTClassifier(CONFIG, 3)
    assert clf.freeze(0) == ["head.weight", "head.bias"]
    names = clf.freeze(1)
    assert any(n.startswith("gpt.blocks.1.") for n in names) and "gpt.ln_f.weight" in names
    assert not any(n.startswith("gpt.blocks.0.") or n.startswith("gpt.wte") for n in names)
    with pytest.raises(FastdataError, match="train_last"):
        clf.freeze(3)
