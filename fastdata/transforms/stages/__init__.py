"""Batch-level stages: whole chunks of samples in one Numba ``nogil`` call.

- :mod:`.png`: RandomCrop (with padding) and flips on small PNGs.
- :mod:`.jpeg`: RandomResizedCrop and flips on JPEGs, with region decoding.
- :mod:`.raw`: crop, pad, flip and normalise whole batches of raw pixels (``--raw``
  shards) straight from the shard's bytes.

A :class:`~fastdata.transforms.plan.Plan` whose sample stage matches the pattern of the PNG
or JPEG stage hands it whole chunks of encoded samples (NOTE [ Counter-based draws ] in
:mod:`.png`); the shard batch path (:mod:`fastdata.loading.batches`) runs the raw stage.

Imports the rest of :mod:`fastdata.transforms`, :mod:`fastdata.decode` and :mod:`fastdata.errors`.
"""
