#!/bin/bash
# fcvr's vectorised L ε (commit 20e32dc) against the commit before it (697b09c):
# bench_routers at the standard config, 2 threads, interleaved A B B A.
# Run with the study paused (SIGSTOP) and nothing else running.
A=/work/wt-prev/build/bench_routers   # 697b09c
B=/work/main/build/bench_routers      # after
echo "== CPU"; lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*\(avx512f\).*/Flags: ... avx2 ... avx512f .../'
uptime
for r in A B B A   # second log: B A A B; do
  bin=${!r}
  echo "== $r ($bin)"
  OMP_NUM_THREADS=2 $bin --reps 9 --d 256 --d-expert 1024 --seq 256
done
uptime
