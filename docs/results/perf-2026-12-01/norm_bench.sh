#!/bin/bash
# The parallel gradient norm (909c709) against its parent (59c6113): bench_train,
# standard config, 2 threads, interleaved A B B A B A, study paused.
A=/work/wt-norm/build/bench_train   # 59c6113
B=/work/main/build/bench_train      # after (main)
lscpu | grep -E "Model name|^CPU\(s\)"; uptime
for r in A B B A B A; do
  bin=${!r}
  printf "%s " $r; OMP_NUM_THREADS=2 $bin --steps 5 --infer-steps 0 --json | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(round(d['train_ms'],1), [round(x,1) for x in d['train_ms_all']])"
done
uptime
