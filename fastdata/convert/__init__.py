"""Datasets into shards: the ``fastdata convert`` command.

- :mod:`.sources`: image folders, CSV/JSONL manifests and numpy arrays (local or fsspec
  URLs) as a list of items.
- :mod:`.prepare`: one item into the encoded fields of one sample (re-encoding, dedupe hashes).
- :mod:`.plan`: the shard tasks, fixed up front (which items go into which shard).
- :mod:`.task`: one shard task (its shard and index part) and the merge of the parts.
- :mod:`.local_engine`, :mod:`.ray_engine`: what runs the tasks (a process pool, or Ray).
- :mod:`.tokenizers`, :mod:`.text_sources`, :mod:`.token_task`, :mod:`.tokenize`: ``--tokenize``,
  text documents into token shards (``fastdata.shards.tokens``) through the same task/engine split.
- :mod:`.command`: the resumable conversion and its command line
  (``convert``, ``ConvertOptions`` and ``format_report`` are importable from here).

Imports only :mod:`fastdata.shards` and :mod:`fastdata.errors` (and Ray, optionally, when
``--engine ray`` asks for it).
"""

from fastdata.convert.command import ConvertOptions, ConvertReport, convert, format_report

__all__ = ["ConvertOptions", "ConvertReport", "convert", "format_report"]
