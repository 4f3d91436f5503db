#!/usr/bin/env bash
# make demo: the whole protocol at quick scale (pretrain on Brown, fine-tune on
# the WordNet task, stage 2 for every router, evaluation, figures).
set -euo pipefail
BUILD=${1:-build}
OUT=${VMOER_DEMO_OUT:-results/demo}
"./$BUILD/vmoer" reproduce --quick --out "$OUT"
echo
echo "table: $OUT/table.md   figures: $OUT/fig_*.png   every number: $OUT/results.json"
