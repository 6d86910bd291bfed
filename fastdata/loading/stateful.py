"""The resumable iterators of the drop-in path: torchdata's, over torch's samplers.

NOTE [ Resuming ]
``fastdata.DataLoader`` has the ``state_dict()`` / ``load_state_dict()`` contract of
torchdata's ``StatefulDataLoader``: the state is that of the current iterator (made by
``state_dict()`` itself before the first ``iter()``), it describes the position after the
last batch delivered (not after the batches workers prefetched), ``load_state_dict`` takes
effect at the next ``iter()`` (workers started then, never before), a state saved at the
end of an epoch resumes at the start of the next one, and ``persistent_workers`` restart
once after a load. The state has torchdata's keys (``_index_sampler_state``,
``_sampler_iter_state``, ``_num_yielded``, ``_iterator_finished``, ``_snapshot`` with the
workers' ``_worker_snapshots``...) and their meaning, so a state saved by either loader
restores in the other.

How: on the drop-in path (not ``compile=True``) the iterators *are* torchdata's stateful
single- and multi-process iterators, run over fastdata's loader, which keeps torch's own
samplers made resumable (NOTE [ Resumable torch samplers ] in
``fastdata.loading.resume``). Delegating is the simplest correct way: the multi-process
part (each worker's dataset and iterator state sent with its batches, replayed on
restore) is torch's worker loop forked by torchdata, which we would otherwise fork again;
and it keeps the loader a subclass of torch's ``DataLoader`` with torch's samplers, hence
torch's batches, where subclassing ``StatefulDataLoader`` would replace the samplers and
change the shuffle order. torchdata is therefore needed to save or load a state on this
path (``pip install torchdata``; ``fastdata[resume]``); without it the loader is torch's
own. The cost is torchdata's: with worker processes, each batch carries its worker's state
and the loader keeps a snapshot per batch, which costs about a third more time per batch
than torch's iterator when the samples are tiny (2 workers, 64 rows of 8 floats a batch);
``snapshot_every_n_steps=N`` (torchdata's argument) takes a snapshot every N batches
instead, and a state is then saved from the last snapshot and replayed up to the last
batch. ``compile=True`` needs no torchdata: its randomness is a pure function of the seed,
epoch and position, so its state is a few counters (``_CompiledIter`` in
``fastdata.loading.dataloader``).
"""

from __future__ import annotations

from typing import Any

import torch.utils.data

__all__ = ["TORCHDATA_HINT", "stateful_iterator"]

TORCHDATA_HINT = "pip install torchdata (or fastdata[resume])"


def stateful_iterator(loader: Any, state: dict | None) -> Any:
    """A drop-in iterator for one epoch of ``loader``, resumed from ``state`` if given.

    Args:
        loader: a ``fastdata.DataLoader`` on its drop-in path.
        state: a state saved by ``state_dict`` (None: start the epoch).

    Returns:
        torchdata's stateful iterator where torchdata is installed, else torch's iterator.

    Raises:
        ImportError: ``state`` is given and torchdata is not installed.
    """
    try:
        from torchdata.stateful_dataloader import stateful_dataloader as td
    except ImportError:
        if state is not None:
            raise ImportError(f"resuming a DataLoader needs torchdata: {TORCHDATA_HINT}") from None
        return torch.utils.data.DataLoader._get_iterator(loader)
    if loader.num_workers == 0:
        return td._StatefulSingleProcessDataLoaderIter(loader, state)
    loader.check_worker_number_rationality()
    return td._StatefulMultiProcessingDataLoaderIter(loader, state)
