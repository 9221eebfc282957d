#!/usr/bin/env bash
# Wheels for the GPU node that ../shared/gpu-node/prepare.sh (read-only here) does not fetch:
# the core dependencies added after it was written. Run from the project root after it;
# writes .dev/extra/*.whl, which benchmarks/gpu_node.sh unpacks into the node's site.
set -euo pipefail
mkdir -p .dev/extra
for p in msgspec; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .dev/extra "$p" 2>&1 | grep -v '^WARNING' || true
done
ls -la .dev/extra
