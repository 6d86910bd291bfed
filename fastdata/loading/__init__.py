"""Loading: the drop-in ``DataLoader``, ``ShardDataset`` and the batch engine under both.

- :mod:`.dataloader`: ``fastdata.DataLoader``, torch's ``DataLoader`` with ``compile=True``.
- :mod:`.compile`: recognising a dataset whose transforms compile (image folders).
- :mod:`.engine`: the batch engine (worker threads or processes filling uint8 batch slots).
- :mod:`.buffers`: the ring of uint8 batches and the pool of output batches.
- :mod:`.shard_dataset`: ``ShardDataset``, an iterable dataset over shards.
- :mod:`.sampling`, :mod:`.schedule`: shard order, the split over ranks and workers, and
  each batch's list of samples.
- :mod:`.batches`: the batch path over local, memory-mapped shards.
- :mod:`.stream`, :mod:`.streamplan`: the streaming path over remote shards.
- :mod:`.fields`: decoding and collating the non-image fields of a sample.

Imports :mod:`fastdata.transforms`, :mod:`fastdata.decode`, :mod:`fastdata.shards` and
:mod:`fastdata.errors`; never the trainer, the pictures or the tools.
"""
