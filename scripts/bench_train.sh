#!/usr/bin/env bash
# scripts/bench_train.sh — training-step and inference benchmark of our model
# against its PyTorch twin (reference/bench_twin.py) on the standard config:
# d=256, 4 layers, 4 heads, 8 experts of hidden size 1024, top-2, sequence 256,
# batch 16, MoE in every layer, vocab 259. Both run on 2 threads, in this run.
#
# Usage: scripts/bench_train.sh [BUILD_DIR]   (default: build)
#   STEPS=5 TWIN_STEPS=3 to change the timed steps (each after 1 warm-up step);
#   BENCH_TRAIN_BIN=path/to/bench_train to use a prebuilt binary.
#
# The twin gets its best, in its own commands only (never in tests or CI):
#   * OpenBLAS instead of Debian's default reference BLAS when it is installed
#     (apt-get install libopenblas0-pthread), through LD_LIBRARY_PATH;
#   * OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they pin OpenBLAS to older
#     kernels on this machine), OPENBLAS_NUM_THREADS=2;
#   * torch.set_num_threads 1 and 2 are both tried; the faster one is reported.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-build}"
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
PY=/usr/bin/python3
STEPS="${STEPS:-5}"
TWIN_STEPS="${TWIN_STEPS:-3}"
THREADS=2

BIN="${BENCH_TRAIN_BIN:-}"  # a prebuilt bench_train skips the build
if [ -z "$BIN" ]; then
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  cmake --build "$BUILD" -j "$THREADS" --target bench_train >/dev/null
  BIN="$BUILD/bench_train"
fi
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the 2 cores skews both sides)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "== ours (OMP_NUM_THREADS=$THREADS) =="
OMP_NUM_THREADS=$THREADS "$BIN" --steps "$STEPS" --json | tee "$TMP/ours.json"

BLASDIR=""
for d in /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/x86_64-linux-gnu/openblas-openmp; do
  if [ -e "$d/libblas.so.3" ]; then BLASDIR="$d"; break; fi
done
if [ -z "$BLASDIR" ]; then
  echo "WARNING: OpenBLAS is not installed; the twin runs on whatever libblas.so.3 is (reference BLAS is" \
       "~100x slower). apt-get install libopenblas0-pthread for a fair comparison." >&2
fi

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "twin NOT RUN: $PY cannot import torch (apt-get install python3-torch)" >&2
  exit 0
fi

for tt in 1 2; do
  echo "== twin (torch threads $tt, OPENBLAS_NUM_THREADS=$THREADS${BLASDIR:+, $BLASDIR}) =="
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$tt \
    ${BLASDIR:+LD_LIBRARY_PATH="$BLASDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"} \
    "$PY" "$ROOT/reference/bench_twin.py" --threads "$tt" --steps "$TWIN_STEPS" | tee "$TMP/twin_$tt.json"
done

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$TMP" <<'EOF'
import json, sys, os
d = sys.argv[1]
ours = json.load(open(os.path.join(d, "ours.json")))
twins = [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.startswith("twin_")]
best = min(twins, key=lambda t: t["train_ms"])
best_inf = max(twins, key=lambda t: t["infer_tokens_per_s"])
blas = ", ".join(f"{b.get('internal_api')}/{b.get('architecture')}x{b.get('num_threads')}"
                 for b in best["blas"] if isinstance(b, dict))
print()
print("standard config: d=256 L=4 H=4 E=8 F=1024 K=2 T=256 B=16 vocab=259, 2 threads")
for t in twins:
    print(f"  twin torch threads {t['threads']}: train {t['train_ms']:.1f} ms/step, "
          f"inference {t['infer_tokens_per_s']:.0f} tok/s")
print(f"{'':14}{'ms/step':>10}{'train tok/s':>13}{'infer tok/s':>13}")
print(f"{'ours':14}{ours['train_ms']:10.1f}{ours['train_tokens_per_s']:13.0f}{ours['infer_tokens_per_s']:13.0f}")
print(f"{'twin (best)':14}{best['train_ms']:10.1f}{best['train_tokens_per_s']:13.0f}"
      f"{best_inf['infer_tokens_per_s']:13.0f}")
print(f"twin best: training at torch threads {best['threads']}, inference at torch threads "
      f"{best_inf['threads']}; BLAS {blas}")
print(f"ratio ours/twin: train time {ours['train_ms'] / best['train_ms']:.2f}x "
      f"(ours {best['train_ms'] / ours['train_ms']:.2f}x as fast), "
      f"inference tokens/s {ours['infer_tokens_per_s'] / best_inf['infer_tokens_per_s']:.2f}x")
pk = ours.get("peak_gflops") or 0
pct = (lambda g: f"{100 * g / pk:.0f}%") if pk > 0 else (lambda g: "?")
print(f"ours: {ours['step_gflop']:.1f} GFLOP/step analytic -> train {ours['train_gflops']:.1f} GFLOP/s, "
      f"inference {ours['infer_gflops']:.1f} GFLOP/s, {pct(ours['train_gflops'])} / {pct(ours['infer_gflops'])} "
      f"of {pk:.0f} GFLOP/s ({ours.get('peak_source', '?')})")
print(f"cpu: {ours.get('cpu', '?')}")
tm = min(twins, key=lambda t: t.get("peak_rss_mib_train", 1e18))
if "peak_rss_mib_train" in ours and "peak_rss_mib_train" in tm:
    print(f"peak RSS after the training steps: ours {ours['peak_rss_mib_train']:.0f} MiB, twin "
          f"{tm['peak_rss_mib_train']:.0f} MiB (torch threads {tm['threads']}, Python runtime included); "
          f"ours/twin {ours['peak_rss_mib_train'] / tm['peak_rss_mib_train']:.2f}x; ours' allocator: "
          f"{ours['pool_peak_live_mib']:.0f} MiB live at most, {ours['pool_cached_mib_after_train']:.0f} MiB idle")
EOF
