"""s3exchange_torch: a PyTorch IterableDataset over s3exchange manifests."""
