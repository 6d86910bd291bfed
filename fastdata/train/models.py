"""Models for the trainer: torchvision classifiers by name, checkpoints, fine-tuning.

Weights only ever come from a local file: ``build_model`` never downloads. Fine-tuning is
three steps, each a function: load a checkpoint (``load_weights``), replace the classification
head for the new number of classes (``replace_head``), and freeze what should not train
(``freeze``); the optimiser then covers ``trainable_parameters(model)`` only.

NOTE [ Blocks ]
A model's "blocks" are its top-level children that hold parameters, with each
``nn.Sequential`` child opened one level: for resnet18 that is conv1, bn1, layer1.0, ...,
layer4.1, fc; for mobilenet_v3 features.0 ... features.16 and the classifier layers. The head
is the last ``nn.Linear`` of the model. "Train the last N blocks" means the last N blocks
before the head, plus the head.

Frozen BatchNorm layers still update their running statistics in training mode; their
weights, which is what ``freeze`` controls, do not change.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import torch
from torch import nn

from fastdata.errors import FastdataError, SourceError


def build_model(
    name: str = "resnet18",
    num_classes: int = 1000,
    checkpoint: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Builds a torchvision classifier by name, with random or local-file weights.

    Args:
        name: a torchvision model name (``torchvision.models.list_models()``).
        num_classes: outputs of the classification head.
        checkpoint: a local file holding a state dict, or a fastdata checkpoint (``"model"``
            key). A head of another size in the file is left out and a fresh head of
            ``num_classes`` outputs is used: that is fine-tuning onto new classes.
        **kwargs: passed to the torchvision builder.

    Raises:
        FastdataError: the name is not a torchvision model.
        SourceError: the checkpoint cannot be read or does not fit the model.
    """
    import torchvision

    if name not in torchvision.models.list_models():
        raise FastdataError(
            f"unknown model {name!r}; see torchvision.models.list_models() for the names"
        )
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a model state dict from a plain state-dict file or a fastdata checkpoint."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise SourceError(str(path), f"cannot read the checkpoint: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise SourceError(str(path), "holds no state dict (expected a dict of tensors)")
    # Checkpoints of compiled or DataParallel models prefix every key.
    for prefix in ("_orig_mod.", "module."):
        if data and all(k.startswith(prefix) for k in data):
            data = {k[len(prefix) :]: v for k, v in data.items()}
    return data


def load_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Loads weights from a local file into ``model``; a mismatched head is left out.

    Returns:
        The names of the head parameters that were left out (empty when all loaded).

    Raises:
        SourceError: other keys or shapes do not match the model.
    """
    state = read_state_dict(path)
    head_name, _ = find_head(model)
    own = model.state_dict()
    skipped = [
        k
        for k in list(state)
        if k.startswith(head_name + ".") and k in own and state[k].shape != own[k].shape
    ]
    for k in skipped:
        del state[k]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ: another architecture or width
        first = " ".join(str(exc).split())[:200]
        raise SourceError(
            str(path), f"does not fit {type(model).__name__} ({first}); was it saved from"
            " another architecture?",
        ) from exc
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise SourceError(
            str(path),
            f"does not fit {type(model).__name__}: missing {missing[:5]}, unexpected"
            f" {unexpected[:5]}; was it saved from another architecture?",
        )
    return skipped


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Returns the qualified name and module of the classification head (the last Linear)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FastdataError(
            f"{type(model).__name__} has no nn.Linear head; replace its head by hand"
        )
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Replaces the classification head with a fresh ``nn.Linear`` of ``num_classes`` outputs.

    Returns:
        The new head.
    """
    name, old = find_head(model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return new


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Lists the model's blocks in order (see NOTE [ Blocks ])."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        parts = child.named_children() if isinstance(child, nn.Sequential) else [("", child)]
        for sub, module in parts:
            if any(True for _ in module.parameters()):
                out.append((f"{name}.{sub}" if sub else name, module))
    return out


def freeze(model: nn.Module, train_last: int = 0) -> list[str]:
    """Freezes all parameters except the head and the last ``train_last`` blocks.

    ``freeze(model)`` freezes the whole backbone; see NOTE [ Blocks ].

    Returns:
        The names of the parameters left trainable.
    """
    if train_last < 0:
        raise ValueError(f"train_last must be >= 0, got {train_last}")
    head_name, head = find_head(model)
    body = [
        (n, m)
        for n, m in blocks(model)
        if not (n == head_name or n.startswith(head_name + ".") or m is head)
    ]
    keep = {id(p) for _, m in body[len(body) - train_last :] if train_last for p in m.parameters()}
    keep |= {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yields the parameters that require gradients."""
    return (p for p in model.parameters() if p.requires_grad)


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Builds an optimiser over the trainable parameters only.

    Args:
        model: the model; frozen parameters are left out.
        name: ``"sgd"`` (with Nesterov momentum) or ``"adamw"``.
        lr: learning rate.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
    """
    params = list(trainable_parameters(model))
    if not params:
        raise FastdataError("the model has no trainable parameters; unfreeze some (freeze())")
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise FastdataError(f"unknown optimizer {name!r}; use 'sgd' or 'adamw'")
