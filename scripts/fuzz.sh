#!/usr/bin/env bash
# scripts/fuzz.sh [SECONDS] [TARGET...] — build the libFuzzer targets in fuzz/
# with clang (-fsanitize=fuzzer,address,undefined) against the project's own
# parser sources, then run each for SECONDS (default 60, or $FUZZ_SECONDS).
#
#   targets: safetensors idx wordnet dict metrics_csv checkpoint  (default: all)
#            checkpoint links the whole library (the trainer's checkpoint path):
#            its first build compiles the layer libraries with clang into build-fuzz/lib
#            (several minutes on 2 cores; incremental afterwards)
#   seeds:   fuzz/corpus/<target>/ (checked in, a few KB each);
#            fuzz/<target>.dict is passed as -dict= when present
#   output:  build-fuzz/<target> (binary), build-fuzz/corpus/<target>/ (the
#            grown corpus, seeded from fuzz/corpus), build-fuzz/<target>.log,
#            crash-*/leak-*/timeout-* reproducers in build-fuzz/artifacts/<target>/
#
# Exits non-zero if any target finds a crash, leak, timeout or OOM. Reproduce a
# finding with: build-fuzz/<target> build-fuzz/artifacts/<target>/crash-...
# Environment: CXX (default clang++), FUZZ_JOBS is not used (one process per
# target, run one after another: the CI machine has 2 cores).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
SECONDS_PER_TARGET="${1:-${FUZZ_SECONDS:-60}}"
shift || true
ALL_TARGETS=(safetensors idx wordnet dict metrics_csv checkpoint)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
CXX="${CXX_FUZZ:-clang++}"
OUT="$REPO/build-fuzz"

die() { echo "fuzz: $*" >&2; exit 1; }
command -v "$CXX" >/dev/null || die "$CXX: not found (apt-get install clang libclang-rt-14-dev)"
[[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || die "SECONDS '$SECONDS_PER_TARGET' is not a whole number"

# Project sources each target links (only the parser under test and what it needs).
sources_of() {
  case "$1" in
    safetensors) echo "nn/checkpoint.cpp core/dist.cpp" ;;  # checkpoint writes on rank 0 only (core/dist, one rank here)
    idx)         echo "data/io.cpp data/vision.cpp" ;;
    wordnet)     echo "data/io.cpp data/wordnet.cpp" ;;
    dict)        echo "data/io.cpp data/dict.cpp" ;;
    metrics_csv) echo "experiments/metrics.cpp" ;;
    checkpoint)  echo "" ;;  # links the layer libraries of build-fuzz/lib
    *) die "unknown target '$1' (known: ${ALL_TARGETS[*]})" ;;
  esac
}

FLAGS=(-std=c++20 -O1 -g -fno-omit-frame-pointer -I"$REPO"
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -DVMOER_SOURCE_DIR="\"$REPO\"")
mkdir -p "$OUT"

# The whole library, instrumented for fuzzing, through the project's CMake.
build_lib() {
  echo "[fuzz] building the library layers with $CXX (build-fuzz/lib)"
  cmake -S "$REPO" -B "$OUT/lib" -DCMAKE_CXX_COMPILER="$(command -v "$CXX")" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DVMOER_CUDA=OFF -DVMOER_NATIVE=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
    >"$OUT/lib.configure.log" 2>&1 || { tail -n 20 "$OUT/lib.configure.log" >&2; die "cmake configure failed"; }
  cmake --build "$OUT/lib" -j "${JOBS:-$(nproc)}" --target vmoer_experiments >"$OUT/lib.build.log" 2>&1 ||
    { tail -n 20 "$OUT/lib.build.log" >&2; die "library build failed (see $OUT/lib.build.log)"; }
}

status=0
for t in "${TARGETS[@]}"; do
  srcs="$(sources_of "$t")"
  bin="$OUT/$t"
  if [ "$t" = checkpoint ]; then
    build_lib
    echo "[fuzz] building $t"
    "$CXX" "${FLAGS[@]}" -fopenmp -isystem /usr/include/eigen3 "fuzz/fuzz_$t.cpp" \
      "$OUT"/lib/libvmoer_{experiments,data,nn,autodiff,kernels,core}.a \
      -lz -lpng -o "$bin" 2>"$OUT/$t.build.log" ||
      { tail -n 20 "$OUT/$t.build.log" >&2; die "$t: build failed (see $OUT/$t.build.log)"; }
    continue
  fi
  echo "[fuzz] building $t"
  # shellcheck disable=SC2086
  "$CXX" "${FLAGS[@]}" "fuzz/fuzz_$t.cpp" core/tensor.cpp $srcs -lz -lpng -o "$bin" 2>"$OUT/$t.build.log" ||
    { tail -n 20 "$OUT/$t.build.log" >&2; die "$t: build failed (see $OUT/$t.build.log)"; }
done

for t in "${TARGETS[@]}"; do
  corpus="$OUT/corpus/$t"
  art="$OUT/artifacts/$t"
  mkdir -p "$corpus" "$art"
  [ -d "fuzz/corpus/$t" ] && cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  echo "[fuzz] running $t for ${SECONDS_PER_TARGET}s"
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" UBSAN_OPTIONS="print_stacktrace=1" OMP_NUM_THREADS=1 \
    "$OUT/$t" "$corpus" "${dict[@]}" -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" >"$OUT/$t.log" 2>&1
  rc=$?
  execs="$(grep -m1 'stat::number_of_executed_units' "$OUT/$t.log" | awk '{print $2}')"
  cov="$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$OUT/$t.log" | tail -n1 | grep -o 'cov: [0-9]*' || true)"
  found="$(ls "$art" 2>/dev/null | wc -l)"
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    echo "[fuzz] $t: FAILED (exit $rc, $found reproducer(s) in $art; log $OUT/$t.log)"
    grep -m3 -E 'ERROR|runtime error|SUMMARY' "$OUT/$t.log" | sed 's/^/[fuzz]   /'
    status=1
  else
    echo "[fuzz] $t: ok, ${execs:-?} inputs in ${SECONDS_PER_TARGET}s, ${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) files"
  fi
done
exit $status
