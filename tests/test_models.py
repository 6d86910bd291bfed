"""Tests of model building and fine-tuning (fastdata.train.models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastdata.errors import FastdataError, SourceError
from fastdata.train.loop import fit
from fastdata.train.models import (
    blocks,
    build_model,
    find_head,
    freeze,
    make_optimizer,
    replace_head,
)

torchvision = pytest.importorskip("torchvision")


def _batches(n: int = 2, classes: int = 3) -> list:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, classes, (4,), generator=g))
        for _ in range(n)
    ]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}  # fit may move it to a GPU


def test_build_model_by_name_without_downloads():
    model = build_model("resnet18", num_classes=5)
    assert find_head(model)[0] == "fc" and model.fc.out_features == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(FastdataError, match="list_models"):
        build_model("resnet-18")


def test_blocks_of_resnet18():
    names = [n for n, _ in blocks(build_model("resnet18", num_classes=2))]
    assert names[:3] == ["conv1", "bn1", "layer1.0"]
    assert names[-3:] == ["layer4.0", "layer4.1", "fc"]


def test_freeze_backbone_trains_only_the_head():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    assert freeze(model) == ["fc.weight", "fc.bias"]
    before = _snapshot(model)
    fit(model, _batches(), epochs=1, lr=0.1, scheduler=None, progress=False)
    after = _snapshot(model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith("fc."), name


def test_freeze_all_but_the_last_block():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    trainable = freeze(model, train_last=1)
    assert all(n.startswith(("layer4.1.", "fc.")) for n in trainable)
    opt = make_optimizer(model, "adamw", lr=1e-3)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    before = _snapshot(model)
    fit(model, _batches(), epochs=1, lr=0.05, optimizer="adamw", progress=False)
    after = _snapshot(model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith(("layer4.1.", "fc.")), name


def test_replace_head_on_another_architecture():
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    head = replace_head(model, 4)
    assert model.classifier[3] is head and head.out_features == 4
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 4)
    freeze(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "classifier.3.weight",
        "classifier.3.bias",
    ]


def test_fine_tune_from_a_checkpoint_with_other_classes(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet18", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    # A fastdata training checkpoint keeps the weights under "model"; prefixes are dropped.
    prefixed = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": prefixed, "optimizer": {}}, tmp_path / "ckpt.pt")
    for path in ("weights.pt", "ckpt.pt"):
        model = build_model("resnet18", num_classes=3, checkpoint=tmp_path / path)
        assert model.fc.out_features == 3
        for name, tensor in source.state_dict().items():
            if not name.startswith("fc."):
                assert torch.equal(model.state_dict()[name], tensor), name
    same = build_model("resnet18", num_classes=10, checkpoint=tmp_path / "weights.pt")
    assert torch.equal(same.fc.weight, source.fc.weight)


def test_checkpoint_errors(tmp_path):
    torch.save(build_model("resnet34", num_classes=2).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(SourceError, match="does not fit ResNet"):
        build_model("resnet18", num_classes=2, checkpoint=tmp_path / "r34.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SourceError, match="cannot read"):
        build_model("resnet18", checkpoint=tmp_path / "junk.pt")
    with pytest.raises(FastdataError, match="no trainable"):
        model = nn.Linear(2, 2)
        model.requires_grad_(False)
        make_optimizer(model)
