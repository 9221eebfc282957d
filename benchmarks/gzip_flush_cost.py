"""What a seekable .tar.gz costs in size: ``write_shard`` output at several flush spacings
against a whole-stream gzip of the same members (text-like and image-like samples).

    python -m benchmarks.gzip_flush_cost

Figures quoted at :data:`s3exchange.shard_index.FLUSH_SPACING` and in the README.
"""

from __future__ import annotations

import io
import json
import random

from s3exchange.tar_writer import write_shard
from s3exchange.types import ShardItem


def text_items(n: int, rng: random.Random) -> list[ShardItem]:
    """Captions from a Zipf vocabulary and their JSON metadata: ~200 bytes a member."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    items: list[ShardItem] = []
    for i in range(n):
        caption = " ".join(rng.choices(words, weights, k=rng.randint(8, 40)))
        meta = {
            "caption": caption,
            "width": rng.randint(200, 1024),
            "height": rng.randint(200, 1024),
            "url": f"https://example.com/img/{rng.getrandbits(48):x}.jpg",
        }
        items.append({"source": caption.encode(), "member_path": f"{i:06d}.txt"})
        items.append({"source": json.dumps(meta).encode(), "member_path": f"{i:06d}.json"})
    return items


def image_items(n: int) -> list[ShardItem]:
    """Smooth noisy JPEGs (quality 90, 256x192, ~18 KB) and a label each."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(0)
    items: list[ShardItem] = []
    for i in range(n):
        base = Image.fromarray(gen.integers(0, 255, (24, 32, 3)).astype(np.uint8))
        pixels = np.asarray(base.resize((256, 192), Image.Resampling.BICUBIC)).astype(np.int16)
        pixels += gen.integers(-8, 8, pixels.shape).astype(np.int16)
        out = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
        items.append({"source": out.getvalue(), "member_path": f"{i:06d}.jpg"})
        items.append(
            {"source": json.dumps({"label": i % 1000}).encode(), "member_path": f"{i:06d}.cls"}
        )
    return items


def gzip_size(items: list[ShardItem], spacing: int) -> tuple[int, int]:
    out = io.BytesIO()
    result = write_shard(
        items, out, archive_key="x.tar.gz", compression="gzip", flush_spacing=spacing
    )
    return len(out.getvalue()), result.members_size_bytes


def main() -> None:
    for name, items in (("text", text_items(4000, random.Random(0))), ("image", image_items(400))):
        whole, raw = gzip_size(items, 1 << 62)
        each = raw / len(items)
        print(f"{name}: {len(items)} members, {each:.0f} B each, whole-stream {whole / raw:.3f}")
        for spacing in (0, 16 << 10, 64 << 10, 256 << 10):
            size, _ = gzip_size(items, spacing)
            cost = 100 * (size / whole - 1)
            print(f"  flush every {spacing >> 10:3d} KiB: {size / raw:.3f}, {cost:+.1f}%")


if __name__ == "__main__":
    main()
