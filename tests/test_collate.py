"""pack_bytes: a batch of byte samples crosses from DataLoader workers as one shared tensor."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from s3exchange_torch import PackedBatch, pack_bytes
from s3exchange_torch.collate import _PickledExtras


class Samples(IterableDataset[tuple[bytes, dict[str, int]]]):
    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self) -> Iterator[tuple[bytes, dict[str, int]]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(worker, self.count, workers):
            yield bytes([i % 251]) * (1000 + i), {"i": i}


def _unpack(batches: list[PackedBatch]) -> dict[int, bytes]:
    got: dict[int, bytes] = {}
    for batch in batches:
        assert isinstance(batch, PackedBatch)
        assert batch.data.dtype == torch.uint8
        for index, (view, extra) in enumerate(batch):
            assert bytes(view.tolist()) == batch.tobytes(index)
            got[extra["i"]] = batch.tobytes(index)
    return got


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_arrive_intact_in_one_tensor(workers: int) -> None:
    loader = DataLoader(Samples(50), batch_size=8, num_workers=workers, collate_fn=pack_bytes)
    batches = list(loader)
    got = _unpack(batches)
    assert got == {i: bytes([i % 251]) * (1000 + i) for i in range(50)}
    assert len(batches[0]) == 8  # all held at once: past the reused slabs, one-off segments


def test_entries_cross_processes_as_one_pickle_decoded_when_read() -> None:
    entries = [{"key": f"a.tar#{i}.bin", "size_bytes": i, "crc32c": None} for i in range(4)]
    batch = PackedBatch(torch.zeros(6, dtype=torch.uint8), [0, 1, 2, 3, 6], entries)
    received = pickle.loads(pickle.dumps(batch))
    assert isinstance(received._extras, _PickledExtras)  # nothing decoded yet
    assert len(received) == 4
    on_device = received.with_data(received.data.clone())
    assert isinstance(on_device._extras, _PickledExtras)  # a copy of the data keeps it so
    assert on_device.extras == entries
    assert received[3][1] == entries[3]
    assert received.extras is received.extras  # decoded once


@pytest.mark.parametrize("extra", [{"label": torch.tensor([1, 2])}, ("a", 1), {"meta": {"x": 1}}])
def test_other_extras_are_pickled_inline(extra: object) -> None:
    batch = PackedBatch(torch.zeros(2, dtype=torch.uint8), [0, 1, 2], [extra, extra])
    received = pickle.loads(pickle.dumps(batch))
    assert isinstance(received._extras, list)
    assert str(received.extras[1]) == str(extra)
