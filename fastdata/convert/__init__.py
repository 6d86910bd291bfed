"""Datasets into shards: the ``fastdata convert`` command.

- :mod:`.sources`: image folders, CSV/JSONL manifests and numpy arrays as a list of items.
- :mod:`.prepare`: one item into the encoded fields of one sample (re-encoding, dedupe hashes).
- :mod:`.command`: the parallel, resumable conversion and its command line
  (``convert``, ``ConvertOptions`` and ``format_report`` are importable from here).

Imports only :mod:`fastdata.shards` and :mod:`fastdata.errors`.
"""

from fastdata.convert.command import ConvertOptions, ConvertReport, convert, format_report

__all__ = ["ConvertOptions", "ConvertReport", "convert", "format_report"]
