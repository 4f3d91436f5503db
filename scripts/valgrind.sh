#!/usr/bin/env bash
# scripts/valgrind.sh [BUILD_DIR] — valgrind memcheck on short `vmoer` runs:
# a tiny MoE LM pretrained for 4 steps, fine-tuned from that checkpoint on the
# WordNet task for 2 steps, a stage-2 router run (mfvr) for 2 steps, and
# `vmoer eval` of the result, all on the data fixtures (tests/fixtures/data).
#
# Valgrind 3.19 does not decode AVX-512, so the binary is built separately
# (default build-valgrind/) with -DVMOER_NATIVE=OFF (x86-64-v3: AVX2 + FMA,
# which valgrind handles) and RelWithDebInfo (-O2 -g) for file:line in reports.
# One thread (OMP_NUM_THREADS=1): memcheck serialises threads anyway.
#
# Exits non-zero if memcheck reports any error or a definite/indirect leak;
# prints each run's ERROR SUMMARY and LEAK SUMMARY. Logs: <BUILD_DIR>/valgrind-*.log
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BUILD="${1:-build-valgrind}"
JOBS="${JOBS:-$(nproc)}"
FIX="$REPO/tests/fixtures/data"

die() { echo "valgrind.sh: $*" >&2; exit 1; }
command -v valgrind >/dev/null || die "valgrind: not found (apt-get install valgrind)"

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMOER_NATIVE=OFF -DVMOER_CUDA=OFF >/dev/null ||
  die "cmake configure failed"
cmake --build "$BUILD" -j "$JOBS" --target vmoer >"$BUILD/valgrind-build.log" 2>&1 ||
  { tail -n 20 "$BUILD/valgrind-build.log" >&2; die "build failed (see $BUILD/valgrind-build.log)"; }

OUT="$(mktemp -d "${TMPDIR:-/tmp}/vmoer-valgrind.XXXXXX")" || die "mktemp failed"
trap 'rm -rf "$OUT"' EXIT
export OMP_NUM_THREADS=1
# A policy set here keeps vmoer from executing itself again to choose one
# (core/omp_policy.h): valgrind would not follow that exec, and check nothing.
export OMP_WAIT_POLICY=passive

ARCH="--d-model 16 --layers 2 --heads 2 --experts 4 --top-k 2 --d-expert 16 --max-seq 256"
status=0
run() {  # name args...
  local name="$1"; shift
  local log="$BUILD/valgrind-$name.log"
  echo "[valgrind] $name: vmoer $*"
  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --track-origins=yes --num-callers=30 --log-file="$log" \
    "$BUILD/vmoer" "$@" >"$log.out" 2>&1
  local rc=$?
  grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|All heap blocks" "$log" |
    sed "s/^==[0-9]*== /[valgrind] $name:   /"
  if [ "$rc" -ne 0 ]; then
    echo "[valgrind] $name: FAILED (exit $rc; see $log and $log.out)"
    status=1
  fi
}

run pretrain train --stage pretrain --data-dir "$FIX" $ARCH --seq 16 --batch 2 --steps 4 --eval-every 2 \
  --eval-batches 1 --no-progress --threads 1 --out "$OUT/pre"
run finetune train --stage finetune --data-dir "$FIX" --init "$OUT/pre/last.safetensors" --batch 4 --steps 2 \
  --eval-every 2 --no-progress --threads 1 --out "$OUT/ft"
run router train --stage router --router mfvr --bayes-layers 1 --data-dir "$FIX" --init "$OUT/ft/best.safetensors" \
  --batch 4 --steps 2 --eval-every 2 --no-progress --threads 1 --out "$OUT/rt"
run eval eval --ckpt "$OUT/rt/best.safetensors" --data-dir "$FIX" --samples 2 --ood-size 8 --threads 1 --no-progress
[ "$status" -eq 0 ] && echo "[valgrind] memcheck clean: no errors, no definite or indirect leaks"
exit $status
