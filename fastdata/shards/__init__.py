"""The WebDataset format: shard URLs, tar reading and writing, the index, verification.

- :mod:`.urls`: brace expansion of shard patterns and opening local files, fsspec URLs and
  ``pipe:`` commands as byte streams.
- :mod:`.tario`: tar members grouped into samples by key (``iter_samples``).
- :mod:`.writer`: ``ShardWriter``, shards written under a temporary name and renamed.
- :mod:`.index`: the JSON index beside the shards (counts, sizes, hashes, statistics).
- :mod:`.verify`: the ``fastdata verify`` command.
- :mod:`.shardmap`: a local shard memory-mapped with its member table, for the loaders.
- :mod:`.tokens`: token shards (one contiguous token array per shard, memory-mapped).

The lowest wing: it imports only :mod:`fastdata.errors`.
"""
