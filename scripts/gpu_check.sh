#!/usr/bin/env bash
# scripts/gpu_check.sh [OUT_DIR] — everything a session with a GPU should run,
# in one command, each step's log under OUT_DIR (default: gpu-logs):
#   1. build with the CUDA backend (build-gpu/, sm_90);
#   2. the CUDA tests: kernel parity (tests/test_cuda.cpp), the op table's CUDA
#      column and the training step GPU vs CPU (tests/test_cuda_ops.cpp);
#   3. the same op-table case under compute-sanitizer (memcheck), if installed;
#   4. the kernel dev harness (bench_cuda: validation, GB/s, GFLOP/s) and the
#      op table's benchmarks on device tensors (bench_ops --device cuda);
#   5. training step and inference, ours vs the PyTorch twin, on the GPU, and
#      each router's evaluation cost at S = 35 against det (bench_routers);
#   6. a short `vmoer train --device cuda` run and the same run on the CPU
#      (losses side by side).
# Steps keep going after a failure; the exit status is the number of failed steps.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-gpu-logs}"
mkdir -p "$OUT"
cd "$ROOT"
fails=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.txt, report
  local name="$1"
  shift
  echo "== $name: $*"
  if "$@" >"$OUT/$name.txt" 2>&1; then
    echo "   ok ($(tail -n 1 "$OUT/$name.txt"))"
  else
    echo "   FAILED (exit $?; see $OUT/$name.txt)"
    fails=$((fails + 1))
  fi
}

command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step build bash -c "cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DVMOER_CUDA=ON && cmake --build build-gpu -j"
step tests_cuda ./build-gpu/vmoer_tests -tc='*cuda*,device tensors*,Model::to*'
if command -v compute-sanitizer >/dev/null; then
  step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 ./build-gpu/vmoer_tests -tc='cuda ops*,cuda train*'
fi
step bench_cuda ./build-gpu/bench_cuda
step bench_ops_gpu ./build-gpu/bench_ops --device cuda
step bench_train_gpu ./build-gpu/bench_train --device cuda --steps 10 --json
step bench_train_gpu_tf32 ./build-gpu/bench_train --device cuda --tf32 --steps 10 --json
step bench_twin_gpu /usr/bin/python3 reference/bench_twin.py --device cuda --steps 10
step bench_routers_gpu ./build-gpu/bench_routers --device cuda --samples 35
RUN="$OUT/train"
rm -rf "$RUN"
common=(--stage pretrain --steps 30 --batch 8 --seq 64 --d-model 64 --layers 2 --heads 4 --experts 4
        --d-expert 128 --eval-every 10)
step train_gpu ./build-gpu/vmoer train "${common[@]}" --device cuda --out "$RUN/gpu"
step train_cpu ./build-gpu/vmoer train "${common[@]}" --device cpu --out "$RUN/cpu"
echo "failed steps: $fails (logs in $OUT)"
exit "$fails"
