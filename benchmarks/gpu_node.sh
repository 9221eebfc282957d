#!/usr/bin/env bash
# Issue 9's 16-core measurement in one command, for a session lent a GPU node (no package index
# there). Here first: `bash ../shared/gpu-node/prepare.sh` (builds .dev/; add /.dev/ to
# .git/info/exclude). Then, through the device tool with carry [".dev"]:
#   bash benchmarks/gpu_node.sh            # shards + loose, 12 workers, CUDA copies, 3 rounds
# Writes the table (table.txt), latest.json and the log to $OUT (default /tmp/gpu-bench).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp/gpu-bench}"; mkdir -p "$out" /tmp/site /tmp/bin
tar -C /tmp/site -xJf .dev/site.tar.xz
xz -dc .dev/weed.xz > /tmp/bin/weed && chmod +x /tmp/bin/weed
export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/bin:$PATH"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    | tee "$out/run.log"
python -m benchmarks.run --workers "${WORKERS:-12}" --only "${ONLY:-shards,loose}" \
    --rounds "${ROUNDS:-3}" --out "$out" 2>&1 | tee -a "$out/run.log" | tee "$out/table.txt"
