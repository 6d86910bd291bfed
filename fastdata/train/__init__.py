"""The trainer: one visible training loop for image classifiers and language models.

- :mod:`.loop`: ``fit`` (autocast, step, log, evaluate) and the loaders it builds
  (``fit``, ``make_loaders``... are importable from here).
- :mod:`.feed`: the next batch fetched to the device while the model computes.
- :mod:`.checkpoint`: saving and resuming (model, optimiser, loader and RNG state).
- :mod:`.metrics`: accuracy, per-class and macro precision, recall and F1.
- :mod:`.models`: torchvision models built locally, weights loaded, backbones frozen.
- :mod:`.grid`: a grid search that calls ``fit`` once per combination.
- :mod:`.tasks`: what ``fit`` learns: ``Classification`` (the default) or
  ``LanguageModeling`` (next-token prediction on token batches).
- :mod:`.gpt`: a small GPT and a classifier on it, for token shards.
- :mod:`.command`: the ``fastdata train`` command.
- :mod:`.lm_command`: the ``fastdata train-lm`` command and ``make_token_loaders``.

Imports every wing below it (:mod:`fastdata.pictures`, :mod:`fastdata.loading`,
:mod:`fastdata.transforms`, :mod:`fastdata.shards`...); only :mod:`fastdata.tools` imports it.
"""

from fastdata.train.loop import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainResult,
    fit,
    make_loaders,
    make_shard_loaders,
    write_report,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TrainResult",
    "fit",
    "make_loaders",
    "make_shard_loaders",
    "write_report",
]
