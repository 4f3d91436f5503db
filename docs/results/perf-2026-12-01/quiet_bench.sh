#!/bin/bash
# Issue 20 benchmarks in one quiet window: before (commit eb79563, Eigen GEBP,
# no tape release, spinning OpenMP) vs after (main), same run, interleaved.
# usage: quiet_bench.sh OUTDIR
set -u
OUT=${1:-/tmp/qb}; mkdir -p $OUT
B=/work/wt-before/build; A=/work/main/build
pkill -STOP -f vmoer-123eb7f
trap 'pkill -CONT -f vmoer-123eb7f' EXIT
{
date -u; uptime
lscpu | grep -E "Model name|^CPU\(s\)|Flags|L1d|L2|L3|family|Model:"
cd /work/main; git log --oneline -1
echo "== bench_gemm before (Eigen GEBP tiles)"; OMP_NUM_THREADS=2 $B/bench_gemm --threads 1,2
echo "== bench_gemm after (BLIS tiles)"; OMP_NUM_THREADS=2 $A/bench_gemm --threads 1,2
for r in 1 2 3; do
  echo "== bench_train before, round $r"; OMP_NUM_THREADS=2 $B/bench_train --steps 5 --json
  echo "== bench_train after (passive), round $r"; OMP_NUM_THREADS=2 $A/bench_train --steps 5 --json
  echo "== bench_train after, OMP_WAIT_POLICY=active, round $r"; OMP_WAIT_POLICY=active OMP_NUM_THREADS=2 $A/bench_train --steps 5 --json
done
echo "== bench_routers before (1 thread)"; OMP_NUM_THREADS=1 $B/bench_routers --reps 7
echo "== bench_routers after (1 thread)"; OMP_NUM_THREADS=1 $A/bench_routers --reps 7
echo "== bench_routers after, standard config (2 threads)"; OMP_NUM_THREADS=2 $A/bench_routers --reps 3 --d 256 --d-expert 1024 --seq 256
echo "== twin vs ours (after)"; BENCH_TRAIN_BIN=$A/bench_train STEPS=5 TWIN_STEPS=3 /work/main/scripts/bench_train.sh
echo "== /usr/bin/time -v peak RSS, 2 training steps each"
/usr/bin/time -v env OMP_NUM_THREADS=2 $B/bench_train --steps 1 --warmup 1 --infer-steps 1 2>&1 | grep -E "Maximum resident|train step"
/usr/bin/time -v env OMP_NUM_THREADS=2 $A/bench_train --steps 1 --warmup 1 --infer-steps 1 2>&1 | grep -E "Maximum resident|train step"
echo "== loaded: 5 busy loops beside the benchmark"
for i in 1 2 3 4 5; do (timeout 400 sh -c 'while :; do :; done' &); done; sleep 3; uptime
for r in 1 2; do
  echo "== loaded before, round $r"; OMP_NUM_THREADS=2 $B/bench_train --steps 2 --infer-steps 1 --peak 100 | grep -E "train step|inference  "
  echo "== loaded after passive, round $r"; OMP_NUM_THREADS=2 $A/bench_train --steps 2 --infer-steps 1 --peak 100 | grep -E "train step|inference  "
  echo "== loaded after active, round $r"; OMP_WAIT_POLICY=active OMP_NUM_THREADS=2 $A/bench_train --steps 2 --infer-steps 1 --peak 100 | grep -E "train step|inference  "
done
echo "== loaded twin (torch threads 1 and 2, OpenBLAS 2)"
for tt in 1 2; do env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 OMP_NUM_THREADS=$tt LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread /usr/bin/python3 /work/main/reference/bench_twin.py --threads $tt --steps 2 --infer-steps 1 | python3 -c "import json,sys; d=json.load(sys.stdin); print('twin threads', d['threads'], 'train ms', round(d['train_ms']), 'infer tok/s', round(d['infer_tokens_per_s']))"; done
pkill -f "while :; do :; done"; uptime
date -u
} 2>&1 | tee $OUT/bench.log
