"""s3exchange_torch: a PyTorch IterableDataset over s3exchange manifests.

``S3ExchangeIterableDataset`` streams loose objects and tar shards listed in a manifest, split
across data-parallel ranks and DataLoader workers, shuffled reproducibly, and resumable
mid-epoch with ``torchdata``'s ``StatefulDataLoader``. See :mod:`s3exchange_torch.dataset`.
"""

from s3exchange.samples import key_and_field

from .collate import PackedBatch, Sample, collate_into, pack_bytes
from .dataset import S3ExchangeIterableDataset, SampleTooLargeError
from .loader import LoaderWorkerError, S3ExchangeLoader
from .mapdataset import S3ExchangeMapDataset
from .mixing import Source
from .plan import Balance, EpochPlan, Segment
from .units import GroupBy

__all__ = [
    "Balance",
    "EpochPlan",
    "GroupBy",
    "LoaderWorkerError",
    "PackedBatch",
    "S3ExchangeIterableDataset",
    "S3ExchangeLoader",
    "S3ExchangeMapDataset",
    "Sample",
    "SampleTooLargeError",
    "Segment",
    "Source",
    "collate_into",
    "key_and_field",
    "pack_bytes",
]
