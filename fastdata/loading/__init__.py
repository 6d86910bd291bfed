"""Loading: the drop-in ``DataLoader``, ``ShardDataset`` and the batch engine under both.

- :mod:`.dataloader`: ``fastdata.DataLoader``, torch's ``DataLoader`` with ``compile=True``.
- :mod:`.compile`: recognising a dataset whose transforms compile (image folders).
- :mod:`.engine`: the batch engine (worker threads or processes filling uint8 batch slots).
- :mod:`.buffers`: the ring of uint8 batches and the pool of output batches.
- :mod:`.shard_dataset`: ``ShardDataset``, an iterable dataset over shards.
- :mod:`.order`: the epoch model: one order per epoch, split over ranks, elastic state.
- :mod:`.mix`: ``Mix``, weighted mixing of shard datasets on top of their orders.
- :mod:`.batches`: whole batches from mapped or read shards, by index arithmetic.
- :mod:`.planview`: a compiled plan as the batch maker calls it.
- :mod:`.fields`: decoding and collating the non-image fields of a sample.
- :mod:`.tokens`: ``TokenDataset``, token shards as ``(B, T)`` batches for language models;
  :mod:`.packing` cuts and packs documents into rows, :mod:`.token_source` reads the
  memory-mapped token shards.

Imports :mod:`fastdata.transforms`, :mod:`fastdata.decode`, :mod:`fastdata.shards` and
:mod:`fastdata.errors`; never the trainer, the pictures or the tools.
"""
