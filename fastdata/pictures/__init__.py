"""Pictures a person would rather look at than read, all PNG files drawn with matplotlib.

- :mod:`.plots`: contact sheets, dataset statistics, training curves, confusion matrices
  and throughput charts, from plain arrays and numbers.
- :mod:`.gallery`: the ``fastdata show`` and ``fastdata stats`` commands (decoded,
  transformed samples from shards; per-channel mean/std, class counts, sizes).

Imports :mod:`fastdata.loading`, :mod:`fastdata.transforms`, :mod:`fastdata.decode`,
:mod:`fastdata.shards` and :mod:`fastdata.errors`. It sits below :mod:`fastdata.train`,
whose reports draw their curves with :mod:`.plots`.
"""
