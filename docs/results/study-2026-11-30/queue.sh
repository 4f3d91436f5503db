#!/bin/bash
# Issue 17 study queue: runs each line (NAME BIN ARGS...) of the queue file in
# order, skipping those whose results.json exists. Every run shares the stage
# cache /work/runs/study/stages (--stages), so rerunning this script resumes
# where it stopped (a stopped stage continues from its last checkpoint).
cd /work/runs/study
qf=${1:-queue.txt}
while read -r name bin args; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ -f "$name/results.json" ]] && { echo "skip $name"; continue; }
  mkdir -p "$name"
  cmd="$bin $args --stages /work/runs/study/stages --out /work/runs/study/$name"
  echo "$cmd" > "$name/command.txt"
  echo "== $(date -u +%FT%TZ) start $name: $cmd"
  start=$(date +%s)
  ./bin/$cmd > "$name/run.log" 2>&1
  rc=$?
  echo "== $(date -u +%FT%TZ) end $name rc=$rc $(( $(date +%s) - start ))s"
done < "$qf"
