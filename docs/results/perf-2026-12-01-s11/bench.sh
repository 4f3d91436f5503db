#!/bin/bash
# Issue 20, session 11: the packed fp32 GEMM (commit f2df580) against the
# serial-BLIS tiles it replaced (commit e690623), and against the PyTorch twin,
# in one quiet window. Five rounds, each: ours before, ours after, then
# scripts/bench_train.sh on the after binary (ours again, the twin at torch
# threads 1 and 2 with OpenBLAS on 2 threads, best reported).
# usage: bench.sh OUTDIR   (B, A: the before / after build directories)
set -u
OUT=${1:-/tmp/s11}; mkdir -p $OUT
B=${B:-/work/wt-before/build}; A=${A:-/work/main/build}
{
date -u; uptime
lscpu | grep -E "Model name|^CPU\(s\)|Flags|L1d|L2|L3|family|Model:"
cd /work/main; git log --oneline -1
echo "== bench_gemm before (serial BLIS tiles)"; OMP_NUM_THREADS=2 $B/bench_gemm --threads 1,2 --reps 9
echo "== bench_gemm after (packed tiles)"; OMP_NUM_THREADS=2 $A/bench_gemm --threads 1,2 --reps 9
for r in 1 2 3 4 5; do
  echo "== round $r: bench_train before"; OMP_NUM_THREADS=2 $B/bench_train --steps 5 --json
  echo "== round $r: bench_train after"; OMP_NUM_THREADS=2 $A/bench_train --steps 5 --json
  echo "== round $r: twin vs ours (after)"; BENCH_TRAIN_BIN=$A/bench_train STEPS=5 TWIN_STEPS=3 /work/main/scripts/bench_train.sh
done
echo "== bench_routers after, standard config (2 threads)"; OMP_NUM_THREADS=2 $A/bench_routers --reps 5 --d 256 --d-expert 1024 --seq 256
echo "== /usr/bin/time -v peak RSS, 2 training steps each"
/usr/bin/time -v env OMP_NUM_THREADS=2 $B/bench_train --steps 1 --warmup 1 --infer-steps 1 2>&1 | grep -E "Maximum resident|train step"
/usr/bin/time -v env OMP_NUM_THREADS=2 $A/bench_train --steps 1 --warmup 1 --infer-steps 1 2>&1 | grep -E "Maximum resident|train step"
date -u; uptime
} 2>&1 | tee $OUT/bench.log
