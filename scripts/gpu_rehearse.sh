#!/usr/bin/env bash
# scripts/gpu_rehearse.sh [TARBALL] — `make gpu-rehearse`: try the GPU kit on
# a bare machine before spending GPU time. Puts the tarball of `make
# gpu-bundle` (gpu-kit/bundle.tar.gz) and a copy of the repository (tracked
# and untracked-not-ignored files, as the device tool sends it) into a bare
# Debian root made with debootstrap (no Eigen,
# CLI11, doctest, libpng, libgomp, Python), with the CUDA toolkit's runtime
# libraries added (a CUDA image has them; no driver, no GPU), then checks:
#   1. every binary starts with every library resolved (libcuda, the driver's,
#      is never linked directly: the CUDA runtime loads it when there is a GPU);
#   2. `vmoer train --device cpu` runs and writes its checkpoint;
#   3. `vmoer train --device cuda` fails with its one clear line;
#   4. the CUDA tests say "no CUDA device" and pass; bench_cuda exits 0 saying so;
#   5. `gpu_check.sh --prebuilt` reaches every step: each step's log exists and
#      none of them failed to start (missing library, missing file, bad path).
# The root is cached in $VMOER_REHEARSE_ROOT (default /var/cache/vmoer-rehearse,
# ~250 MB, made once in 2-4 minutes); each run refreshes the copied files.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARBALL="${1:-$ROOT/gpu-kit/bundle.tar.gz}"
CH="${VMOER_REHEARSE_ROOT:-/var/cache/vmoer-rehearse}"
SUITE="${VMOER_REHEARSE_SUITE:-bookworm}"
[ -f "$TARBALL" ] || { echo "gpu-rehearse: no bundle at $TARBALL (run make gpu-bundle)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "gpu-rehearse: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "gpu-rehearse: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }

if [ ! -x "$CH/bin/bash" ] || [ ! -f "$CH/.vmoer-rehearse-ok" ]; then
  echo "[rehearse] debootstrap --variant=minbase $SUITE $CH"
  rm -rf "$CH"
  debootstrap --variant=minbase "$SUITE" "$CH" >"/tmp/vmoer-debootstrap.log" 2>&1 ||
    { tail -n 20 /tmp/vmoer-debootstrap.log; echo "gpu-rehearse: debootstrap failed" >&2; exit 1; }
  touch "$CH/.vmoer-rehearse-ok"
fi
for lib in eigen3 libgomp.so.1 libpng16.so.16 python3; do  # the root must be bare
  if [ -e "$CH/usr/include/$lib" ] || [ -e "$CH/usr/lib/x86_64-linux-gnu/$lib" ] || [ -e "$CH/usr/bin/$lib" ]; then
    echo "gpu-rehearse: $CH is not bare ($lib present)" >&2
    exit 1
  fi
done

# The CUDA image's runtime libraries (cuBLAS etc.), as the GPU machine has them.
CUDA_LIB="$(readlink -f /usr/local/cuda/lib64)"
mkdir -p "$CH/usr/local/cuda/lib64"
for l in "$CUDA_LIB"/libcublas.so* "$CUDA_LIB"/libcublasLt.so* "$CUDA_LIB"/libcurand.so*; do
  [ -e "$CH/usr/local/cuda/lib64/$(basename "$l")" ] || cp -a "$l" "$CH/usr/local/cuda/lib64/"
done

# The repository as the device tool sends it (tracked and untracked-not-ignored
# files) at the same path as here (the tests look there), plus the bundle.
W="$CH$ROOT"
rm -rf "$W"
mkdir -p "$W"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$W"
mkdir -p "$W/gpu-kit"
cp "$TARBALL" "$W/gpu-kit/bundle.tar.gz"
rm -rf "$CH/tmp/rehearse"
mkdir -p "$CH/tmp/rehearse"

# /proc: the dynamic loader needs it to expand $ORIGIN (the bundle's RUNPATH).
mountpoint -q "$CH/proc" || mount -t proc proc "$CH/proc"
trap 'umount "$CH/proc" 2>/dev/null || true' EXIT

fail=0
# Unpack as gpu_check.sh does on the GPU machine (the first checks look at the
# binaries before the kit runs), and link the build folder the tests name.
chroot "$CH" /bin/bash -c "cd $ROOT && tar -xzf gpu-kit/bundle.tar.gz && ln -s gpu-bundle/bin build-gpu-bundle" ||
  { echo "gpu-rehearse: cannot unpack the tarball in the bare root" >&2; exit 1; }
check() {  # check WHAT COMMAND...: run in the root, report
  local what="$1"
  shift
  if chroot "$CH" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root bash -c "$*" >"$CH/tmp/rehearse/out" 2>&1; then
    echo "[rehearse] ok: $what"
  else
    echo "[rehearse] FAILED: $what"
    sed 's/^/    /' "$CH/tmp/rehearse/out" | tail -n 15
    fail=$((fail + 1))
  fi
}
B="$ROOT/gpu-bundle/bin"
export_ld="export LD_LIBRARY_PATH=/usr/local/cuda/lib64;"
check "every binary's libraries resolve (ldd: nothing 'not found')" \
  "$export_ld for b in $B/*; do out=\$(ldd \$b) || { echo \"ldd \$b failed\"; exit 1; }; echo \"\$out\" | grep 'not found' && { echo \"in \$b\"; exit 1; }; done; exit 0"
check "every binary starts (exit 0-2 on --help, not 127 or a signal)" \
  "$export_ld cd $ROOT && for b in $B/*; do \$b --help >/dev/null 2>&1; rc=\$?; echo \"\$(basename \$b) --help: exit \$rc\"; [ \$rc -le 2 ] || exit 1; done"
check "vmoer train --device cpu runs and writes last.safetensors" \
  "$export_ld cd $ROOT && $B/vmoer train --stage pretrain --data-dir tests/fixtures/data --steps 3 --batch 2 --seq 16 --max-seq 32 --d-model 16 --layers 1 --heads 2 --experts 2 --d-expert 16 --eval-every 3 --eval-batches 1 --no-progress --force --out /tmp/rehearse/cpu && test -s /tmp/rehearse/cpu/last.safetensors"
check "vmoer train --device cuda fails with one clear line" \
  "$export_ld cd $ROOT && out=\$($B/vmoer train --device cuda --steps 1 --out /tmp/rehearse/gpu 2>&1); rc=\$?; echo \"\$out\"; [ \$rc -ne 0 ] && echo \"\$out\" | grep -q 'no CUDA device'"
check "the CUDA tests skip with 'no CUDA device' and pass" \
  "$export_ld cd $ROOT && $B/vmoer_tests -tc='*cuda*' >/tmp/rehearse/t 2>&1; rc=\$?; tail -n 3 /tmp/rehearse/t; grep -q 'no CUDA device' /tmp/rehearse/t && [ \$rc = 0 ]"
check "bench_cuda says 'no CUDA device' and exits 0" \
  "$export_ld cd $ROOT && $B/bench_cuda 2>&1 | grep -q 'no CUDA device'"
# The kit itself: every step must start (here they fail for want of a GPU, and
# the twin for want of Python: PYTHON=false stands in for the GPU machine's);
# none may fail to load.
check "gpu_check.sh --prebuilt reaches every step" \
  "cd $ROOT && PYTHON=false bash scripts/gpu_check.sh --prebuilt gpu-kit/bundle.tar.gz /tmp/rehearse/logs; ls /tmp/rehearse/logs; \
   n=\$(ls /tmp/rehearse/logs | wc -l); [ \$n -le 8 ] || { echo \"\$n files: more than the 8 that come back\"; exit 1; }; \
   for f in setup tests_cuda bench_cuda bench_train bench_ops train summary; do ls /tmp/rehearse/logs/\$f.* >/dev/null || exit 1; done; \
   ! grep -l 'error while loading shared libraries\\|No such file or directory\\|cannot execute' /tmp/rehearse/logs/*.txt"
echo "[rehearse] $fail check(s) failed; logs of the kit in $CH/tmp/rehearse/logs"
exit "$fail"
