#!/usr/bin/env bash
# Issue 9's 16-core measurement in one command, for a session lent a GPU node (no package index
# there). Here first: `bash ../shared/gpu-node/prepare.sh` (builds .dev/; add /.dev/ to
# .git/info/exclude), then `bash benchmarks/node_extras.sh` (wheels prepare.sh lacks, into
# .dev/extra/). Then, through the device tool with carry [".dev"]:
#   bash benchmarks/gpu_node.sh            # shards + loose, 12 workers, --node sizes, CUDA copies
# Writes the table (table.txt), latest.json, the log (run.log) and preflight.txt to $OUT
# (default /tmp/gpu-bench). Here, to try the script itself: NO_UNPACK=1 ARGS=--quick bash ...
# MODE=sweep: settings varied + a py-spy profile; MODE=steady: the targets over EPOCHS epochs;
# MODE=diag / knobs: where the loader waits, settings; MODE=ab AB_ROOT=dir: two library versions,
# then MODE=gather: ways to gather a batch onto the GPU (benchmarks/gpu_gather.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp/gpu-bench}"; mkdir -p "$out"
py=python3
if [ -z "${NO_UNPACK:-}" ]; then
  mkdir -p /tmp/site /tmp/bin
  tar -C /tmp/site -xJf .dev/site.tar.xz
  xz -dc .dev/weed.xz > /tmp/bin/weed && chmod +x /tmp/bin/weed
  for wheel in .dev/extra/*.whl; do
    [ -e "$wheel" ] && $py -m zipfile -e "$wheel" /tmp/site
  done
  export PYTHONPATH="/tmp/site:$PWD" PATH="/tmp/bin:$PATH"
else
  py=python
fi
$py -c "import s3exchange, s3exchange_torch" || {
  echo "the library does not import here: a dependency missing from .dev?" \
    "(bash benchmarks/node_extras.sh builds .dev/extra)" >&2
  exit 3
}
export PYTHONUNBUFFERED=1
{
  echo "nproc $(nproc)"; uname -a; df -h /dev/shm /tmp | tail -n +1; free -g | head -2
  $py - <<'PY'
import multiprocessing as mp, pickle, time, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
from s3exchange_torch import shm
print("shm through /proc:", shm._PROC_FD)
def child(q):
    b = shm.SharedBytes(4096); b.data[0] = 7; q.put(pickle.dumps(b)); time.sleep(2)
ctx = mp.get_context("fork"); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,)); p.start()
try:
    print("cross-process open:", int(pickle.loads(q.get(timeout=10)).data[0]) == 7)
except Exception as exc:
    print("cross-process open FAILED:", type(exc).__name__, exc)
p.join()
if torch.cuda.is_available() and __import__("os").environ.get("PIN_PROBE", "1") == "1":  # what page-locking a loader ring costs the main process
    ring = shm.SharedBytes(40 << 20)
    cudart = torch.cuda.cudart(); torch.ones(1).cuda(); torch.cuda.synchronize()
    ptr = ring.data.data_ptr()
    began = time.perf_counter(); code = cudart.cudaHostRegister(ptr, 40 << 20, 0)
    print(f"cudaHostRegister 40 MiB: {(time.perf_counter() - began) * 1e3:.1f} ms, code {int(code)}")
    cudart.cudaHostUnregister(ptr)
PY
} 2>&1 | tee "$out/preflight.txt" || true
set -o pipefail
w="${WORKERS:-12}"; sizes="${ARGS:---node}"  # every mode: 12 workers, the node's sizes
if [ "${MODE:-suite}" = suite ]; then
  timeout "${LIMIT_S:-500}" $py -m benchmarks.run --workers "$w" \
      --only "${ONLY:-shards,loose}" $sizes --out "$out" 2>&1 | tee "$out/run.log"
  exit
fi
if [ "${MODE}" = steady ]; then
  # Throughput in steady state: every reader reads the data EPOCHS times (start-up paid once,
  # the DataLoader readers' workers forked again each epoch as a plain DataLoader does).
  e="epochs=${EPOCHS:-2}"
  timeout 150 $py -m benchmarks.sweep --scenario shards --workers "$w" $sizes --out "$out/shards" \
      "raw_get $e" "loader $e" "ours_default $e" "webdataset $e" "webdataset_shuffled $e" \
      2>&1 | tee "$out/steady-shards.log" || true
  timeout 125 $py -m benchmarks.sweep --scenario loose --workers "$w" $sizes --out "$out/loose" \
      "s3torchconnector $e" "ours_default $e" "loader $e" "sequential $e" \
      2>&1 | tee "$out/steady-loose.log" || true
  exit
fi
if [ "${MODE}" = diag ]; then
  # Where the loader waits (benchmarks/waits.py), beside the raw GET ceiling, short and long runs.
  timeout "${LIMIT_S:-200}" $py -m benchmarks.sweep --scenario shards --workers "$w" $sizes \
      --rounds "${ROUNDS:-2}" --out "$out/shards" "raw_get epochs=2" "loader epochs=2 waits=true" \
      "loader epochs=2 waits=true shuffle=false" "loader epochs=2 waits=true prefetch_batches=6" \
      "loader epochs=2 waits=true device=cpu" "raw_get epochs=6" "loader epochs=6 waits=true" \
      2>&1 | tee "$out/diag-shards.log" || true
  exit
fi
if [ "${MODE}" = knobs ]; then
  # The worker-side settings that could move the loader's share of the raw GET ceiling.
  e="epochs=${EPOCHS:-3}"
  timeout "${LIMIT_S:-200}" $py -m benchmarks.sweep --scenario shards --workers "$w" $sizes \
      --rounds "${ROUNDS:-2}" --out "$out/shards" "raw_get $e" "loader $e" \
      "loader $e switch_interval=0.001" "loader $e switch_interval=0.0002" \
      "loader $e prefetch_shards=1" "loader $e transfer={\"queue_chunks\":16}" \
      "loader $e verify=false" "loader $e in_order=false" 2>&1 | tee "$out/knobs-shards.log" || true
  exit
fi
if [ "${MODE}" = ab ]; then
  # This checkout's readers (AB_READERS) against another checkout's, interleaved on one server,
  # raw GETs as the ceiling. AB_ROOT: e.g. `git archive C benchmarks s3exchange s3exchange_torch
  # | tar -x -C ab-old`, with /ab-old/ in .git/info/exclude and carried beside .dev.
  e="epochs=${EPOCHS:-3}"
  variants=("raw_get $e")
  for r in ${AB_READERS:-loader}; do
    variants+=("$r $e" "$r $e root=\"${AB_ROOT:?AB_ROOT names the other checkout}\"")
  done
  variants+=("loader $e in_order=false")  # this checkout's loader taking the first ready batch
  timeout "${LIMIT_S:-200}" $py -m benchmarks.sweep --scenario shards --workers "$w" $sizes \
      --rounds "${ROUNDS:-3}" --out "$out/shards" "${variants[@]}" \
      2>&1 | tee "$out/ab-shards.log" || true
  MODE=gather
fi
if [ "${MODE}" = gather ]; then
  # How the main process could gather batches onto the GPU (benchmarks/gpu_gather.py).
  timeout 120 $py -m benchmarks.gpu_gather --out "$out/gather" 2>&1 | tee "$out/gather.log" || true
  exit
fi
# MODE=sweep: which settings move the 12-worker figures (benchmarks/sweep.py), then a py-spy
# profile of the loader when .dev/py-spy was carried (ptrace may be refused in a sandbox).
timeout 170 $py -m benchmarks.sweep --scenario shards --workers "$w" $sizes --out "$out/shards" \
    raw_get loader "loader prefetch_shards=0" "loader prefetch_shards=1" "loader verify=false" \
    "loader shuffle=false" "loader switch_interval=0.02" ours_default webdataset \
    2>&1 | tee "$out/sweep-shards.log" || true
timeout 120 $py -m benchmarks.sweep --scenario loose --workers "$w" $sizes --out "$out/loose" \
    s3torchconnector ours ours_default "ours io_threads=8" "ours io_threads=4" loader \
    sequential 2>&1 | tee "$out/sweep-loose.log" || true
if [ -x .dev/py-spy ]; then
  cp .dev/py-spy /tmp/bin/py-spy 2>/dev/null || true
  timeout 90 $py -m benchmarks.profiling --workers "$w" $sizes --rate 100 --set reader=loader --set epochs=3 \
      --out "$out/profile" 2>&1 | tail -60 | tee "$out/profile.log" || true
fi
# Issue 15 at node scale: map-style random access against S3MapDataset, 2 rounds.
timeout "${RANDOM_S:-130}" $py -m benchmarks.run --workers "$w" --only random --rounds 2 $sizes \
    --out "$out/random" 2>&1 | tee "$out/random.log" || true
