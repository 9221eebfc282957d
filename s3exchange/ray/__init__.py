"""s3exchange on Ray Data (the ``ray`` extra): write shards from a cluster, read manifests into
Ray, pack loose objects on Ray.

- :class:`S3ExchangeDatasink`: ``ds.write_datasink(...)`` streams each write task's rows into
  shards and writes the manifest last, once every task has finished (:mod:`.sink`).
- :func:`read_s3exchange`: a manifest's samples as a ``ray.data.Dataset``, one read task per
  group of shards balanced by bytes, every member's checksum verified (:mod:`.source`).
- :func:`pack_objects`: ``pack`` of loose objects already in the bucket, each shard built by a
  Ray task; the same plan, resumability and report as the local ``pack`` (:mod:`.pack`).

The core package never imports this one: ``import s3exchange`` works without Ray installed.
"""

from .pack import pack_objects
from .sink import S3ExchangeDatasink
from .source import S3ExchangeDatasource, read_s3exchange

__all__ = ["S3ExchangeDatasink", "S3ExchangeDatasource", "pack_objects", "read_s3exchange"]
