#!/bin/bash
# docs/SCALE.md §8 "Measured here", again after the expert sharding: the quick
# preset's pretraining model on Brown, 30 steps, three layouts, each twice,
# interleaved; the mean step time over steps 11-30 from log.jsonl, rank 0's
# bytes per step. Usage: ep_steps.sh BUILD_DIR DATA_DIR OUT_DIR
set -euo pipefail
B=${1:-build}; DATA=${2:-.cache/data}; OUT=${3:-/tmp/ep_steps}
rm -rf "$OUT"; mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)|L2|L3"; uptime
A="train --stage pretrain --data-dir $DATA --d-model 96 --d-expert 192 --max-seq 192 --seq 128 --batch 16 --steps 30 --eval-every 0 --no-progress"
MP="mpirun -np 2 --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS=1"
for rep in 1 2; do
  $B/vmoer $A --threads 2 --batch-shards 2 --out $OUT/np1s2-$rep > /dev/null 2>&1
  $MP $B/vmoer $A --threads 1 --out $OUT/np2dp-$rep > /dev/null 2>&1
  $MP $B/vmoer $A --threads 1 --expert-parallel 2 --out $OUT/np2ep-$rep > /dev/null 2>&1
done
uptime
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
for name in ("np1s2", "np2dp", "np2ep"):
    cells = []
    for rep in (1, 2):
        recs = [json.loads(l) for l in open(os.path.join(out, f"{name}-{rep}", "log.jsonl"))]
        st = {r["step"]: r for r in recs if "step" in r and "event" not in r and "seconds" in r}
        t = (st[30]["seconds"] - st[10]["seconds"]) / 20
        comm = sum(st[s].get("comm_seconds", 0) for s in range(11, 31)) / 20
        cells.append(f"{t:.3f} s (exchanges {1000 * comm:.1f} ms, {st[30].get('comm_bytes', 0)} B, "
                     f"ep {st[30].get('comm_ep_bytes', 0)} B, params {st[30].get('param_floats', '-')}, "
                     f"live {st[30].get('mem_live_bytes', '-')} B, loss {st[30]['loss']})")
    print(name, " | ".join(cells))
PY
for f in last.safetensors; do cmp $OUT/np1s2-1/$f $OUT/np2ep-1/$f && echo "np1s2 and np2ep: identical $f"; cmp $OUT/np1s2-1/$f $OUT/np2dp-1/$f && echo "np1s2 and np2dp: identical $f"; done
