#!/usr/bin/env bash
# scripts/gpu_check.sh [--prebuilt DIR] [OUT_DIR] — everything a session with a
# GPU should run, in one command, each step's log in OUT_DIR (default gpu-logs):
#
#   setup.txt       nvidia-smi, the bundle's manifest, every binary's libraries
#   tests_cuda.txt  the CUDA tests: kernel parity (tests/test_cuda.cpp), the op
#                   table's CUDA column, a training step and every router GPU vs
#                   CPU (tests/test_cuda_ops.cpp)
#   sanitizer.txt   compute-sanitizer memcheck on the op table's CUDA column and
#                   the training step (where the runtime allows the tool)
#   bench_cuda.txt  the kernel harness: validation, GB/s against a D2D copy
#   bench_train.txt training step and inference tokens/s, ours (fp32 and TF32)
#                   vs the PyTorch twin on the same GPU
#   bench_ops.txt   the op table on device tensors, and each router's S = 35
#                   evaluation cost against det (bench_routers)
#   train.txt       a short `vmoer train --device cuda` and the same on the CPU
#   summary.json    each step: exit status, seconds, last line
#
# At most 8 files (what the GPU machine sends back), every step under its own
# `timeout`, a failing step does not stop the others: about 6 minutes on an
# H200, at most ~8 (the sum of the time limits below). The exit status is the
# number of failed steps.
#
# --prebuilt DIR|TARBALL: run the binaries of `make gpu-bundle` (DIR/bin, or
# gpu-kit/bundle.tar.gz, unpacked into gpu-bundle/ first) instead of building:
# the GPU machine has no Eigen, CLI11 or doctest and reaches no package
# registry. Without it the script builds build-gpu/ with CMake first.
# The twin runs with the `python3` on the PATH (PYTHON=... to choose another).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREBUILT=""
if [ "${1:-}" = "--prebuilt" ]; then
  PREBUILT="${2:?--prebuilt needs the bundle directory}"
  shift 2
fi
OUT="${1:-gpu-logs}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
SUMMARY="$OUT/summary.json"
echo "[" >"$SUMMARY"
first=1
fails=0
T_START=$(date +%s)

# step NAME LIMIT_S LOGFILE COMMAND...: run under `timeout`, append to the log.
step() {
  local name="$1" limit="$2" log="$OUT/$3"
  shift 3
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  local t0 rc last
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local dt=$(($(date +%s) - t0))
  last="$(tail -n 1 "$log" | tr -d '"\\' | cut -c1-200)"
  if [ "$rc" = 0 ]; then
    echo "   ok in ${dt}s ($last)"
  else
    [ "$rc" = 124 ] && echo "   TIMED OUT after ${limit}s" | tee -a "$log"
    echo "   FAILED (exit $rc after ${dt}s; see $log)"
    fails=$((fails + 1))
  fi
  [ $first = 1 ] || echo "," >>"$SUMMARY"
  first=0
  printf '  {"step": "%s", "exit": %d, "seconds": %d, "log": "%s", "last_line": "%s"}' "$name" "$rc" "$dt" \
    "$(basename "$log")" "$last" >>"$SUMMARY"
}

{
  echo "gpu_check.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n); commit $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  command -v nvidia-smi >/dev/null && nvidia-smi
} >"$OUT/setup.txt" 2>&1

if [ -n "$PREBUILT" ]; then
  if [ -f "$PREBUILT" ]; then  # the tarball: unpack beside the sources
    rm -rf "$ROOT/gpu-bundle"
    tar -C "$ROOT" -xzf "$PREBUILT" || { echo "gpu_check: cannot unpack $PREBUILT" >&2; exit 1; }
    PREBUILT="$ROOT/gpu-bundle"
  fi
  PREBUILT="$(cd "$PREBUILT" && pwd)"
  BIN="$PREBUILT/bin"
  # cuBLAS comes from the machine's CUDA image: the toolkit's lib folder or the
  # nvidia-* wheels beside PyTorch.
  extra=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && extra="$extra:$d"
  done
  wheel_libs="$("$PY" - 2>/dev/null <<'EOF'
import importlib, os
for m in ("nvidia.cublas", "nvidia.cuda_runtime", "nvidia.curand", "nvidia.cu13"):
    try:
        p = importlib.import_module(m).__path__[0]
    except Exception:
        continue
    for sub in ("lib", "lib64"):
        if os.path.isdir(os.path.join(p, sub)):
            print(os.path.join(p, sub))
EOF
)"
  for d in $wheel_libs; do extra="$extra:$d"; done
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}${extra}"
  # The tests find fixtures and headers under the source path compiled into
  # them, and the vmoer binary in the bundle's build folder: make both exist.
  SRC="$(cat "$PREBUILT/source_dir")"
  if [ ! -e "$SRC" ]; then mkdir -p "$(dirname "$SRC")" && ln -s "$ROOT" "$SRC"; fi
  if [ ! -e "$SRC/build-gpu-bundle" ]; then ln -s "$BIN" "$SRC/build-gpu-bundle"; fi
  {
    cat "$PREBUILT/MANIFEST.txt"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    for b in "$BIN"/*; do
      echo "--- ldd $(basename "$b")"
      ldd "$b"
    done
  } >>"$OUT/setup.txt" 2>&1
  if grep -q "not found" "$OUT/setup.txt"; then
    echo "setup: some libraries are not found (see $OUT/setup.txt):"
    grep "not found" "$OUT/setup.txt" | sort -u
  fi
else
  BIN="$ROOT/build-gpu"
  step build 900 setup.txt bash -c "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DVMOER_CUDA=ON && cmake --build build-gpu -j"
fi

step tests_cuda 150 tests_cuda.txt "$BIN/vmoer_tests" -tc='*cuda*,device tensors*,Model::to*'
if command -v compute-sanitizer >/dev/null; then
  step sanitizer 75 sanitizer.txt compute-sanitizer --tool memcheck --error-exitcode 1 "$BIN/vmoer_tests" \
    -tc='cuda ops*,cuda train*'
else
  echo "compute-sanitizer not on PATH" >"$OUT/sanitizer.txt"
fi
step bench_cuda 60 bench_cuda.txt "$BIN/bench_cuda"
step bench_train_gpu 45 bench_train.txt "$BIN/bench_train" --device cuda --steps 10 --json
step bench_train_gpu_tf32 45 bench_train.txt "$BIN/bench_train" --device cuda --tf32 --steps 10 --json
step bench_twin_gpu 75 bench_train.txt "$PY" reference/bench_twin.py --device cuda --steps 10
step bench_ops_gpu 45 bench_ops.txt "$BIN/bench_ops" --device cuda
step bench_routers_gpu 45 bench_ops.txt "$BIN/bench_routers" --device cuda --samples 35
RUN="$OUT/train"
rm -rf "$RUN"
common=(--stage pretrain --data-dir "$ROOT/tests/fixtures/data" --steps 30 --batch 8 --seq 32 --max-seq 32
        --d-model 64 --layers 2 --heads 4 --experts 4 --d-expert 128 --eval-every 10 --eval-batches 1 --no-progress)
step train_gpu 40 train.txt "$BIN/vmoer" train "${common[@]}" --device cuda --out "$RUN/gpu"
step train_cpu 40 train.txt "$BIN/vmoer" train "${common[@]}" --device cpu --out "$RUN/cpu"
for d in gpu cpu; do
  if [ -f "$RUN/$d/log.jsonl" ]; then
    echo "--- $d losses (step: loss)" >>"$OUT/train.txt"
    grep -o '"loss":[^,]*\|"step":[0-9]*' "$RUN/$d/log.jsonl" | paste -d' ' - - >>"$OUT/train.txt"
  fi
done
rm -rf "$RUN"  # checkpoints: not among the files that come back

echo "]" >>"$SUMMARY"
echo "failed steps: $fails, $(($(date +%s) - T_START)) s in all (logs in $OUT)"
exit "$fails"
