#!/bin/bash
# Issue 17 study queue, second form (session 10): like queue.sh, but a run is
# claimed first (mkdir NAME.claim: two workers reading the same queue file
# never start the same run) and the line is run through `eval`, so quoted
# arguments such as --bayes-layers "" (every MoE layer) reach vmoer as typed.
# Waits for WAIT_FOR (a results.json) first, if given.
cd /work/runs/study
export VMOER_DATA=/work/data
qf=${1:-queue.txt}
if [[ -n "${WAIT_FOR:-}" ]]; then
  until [[ -f "$WAIT_FOR" ]]; do sleep 20; done
fi
while read -r name bin args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ -f "$name/results.json" ]] && { echo "skip $name"; continue; }
  mkdir "$name.claim" 2>/dev/null || { echo "skip $name (claimed by another worker)"; continue; }
  mkdir -p "$name"
  cmd="$bin $args --stages /work/runs/study/stages --out /work/runs/study/$name"
  echo "$cmd" > "$name/command.txt"
  echo "== $(date -u +%FT%TZ) start $name: $cmd"
  start=$(date +%s)
  eval "./bin/$cmd" > "$name/run.log" 2>&1
  rc=$?
  echo "== $(date -u +%FT%TZ) end $name rc=$rc $(( $(date +%s) - start ))s"
done < "$qf"
