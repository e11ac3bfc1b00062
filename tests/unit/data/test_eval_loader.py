"""eval_loader: the one way a split is read for evaluation and prediction (val, test, predict)."""

import torch
from torch.utils.data import TensorDataset

from transfer_pipeline.data.datasets import DataBundle, eval_loader, loaders, seed_worker


def test_eval_loader_reads_the_whole_split_in_order_with_seeded_workers():
    ds = TensorDataset(torch.arange(10).float(), torch.arange(10))
    loader = eval_loader(ds, 4)
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert loader.worker_init_fn is seed_worker and not loader.persistent_workers and not loader.pin_memory


def test_workers_persist_only_where_the_loader_is_read_again():
    ds = TensorDataset(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))
    assert not eval_loader(ds, 2, num_workers=1).persistent_workers  # one pass (test split, predict)
    assert not eval_loader(ds, 2, persistent=True).persistent_workers  # no workers to keep
    _, val = loaders(DataBundle(ds, ds, None), 2, seed=0, num_workers=1)
    assert val.persistent_workers and val.batch_size == 4 and val.worker_init_fn is seed_worker
