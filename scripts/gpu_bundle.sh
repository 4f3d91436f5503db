#!/usr/bin/env bash
# scripts/gpu_bundle.sh [OUT] — `make gpu-bundle`: everything a bare GPU machine
# needs to run the CUDA checks, built here (the GPU machine reaches no package
# registry, so it cannot build the project: no Eigen, CLI11, doctest, libpng).
# Writes the folder OUT and, to carry to the GPU machine, gpu-kit/bundle.tar.gz
# (the folder gzipped: ~23 MiB instead of ~73: the CUDA kernels are linked into
# every binary).
#
#   OUT/bin/   vmoer vmoer_tests bench_cuda bench_ops bench_train bench_routers,
#              portable (-march=x86-64-v3: the GPU machine's CPU is another
#              model), CUDA for sm_90 (H100/H200), stripped, RPATH $ORIGIN/../lib
#   OUT/lib/   every shared library they load that a bare CUDA image may lack
#              (libgomp, libpng, zlib, libstdc++, libgcc_s, the CUDA runtime);
#              not glibc, not the driver's libcuda, not cuBLAS (~600 MB: the
#              CUDA image has it; scripts/gpu_check.sh finds it)
#   OUT/MANIFEST.txt  commit, build flags, sizes, each binary's NEEDED list
#   OUT/source_dir    the source path compiled into the tests (fixtures, headers)
#
# Default OUT: gpu-bundle (git-ignored). What travels to the GPU machine is at
# most 64 MiB with the working tree: the tarball must stay under 50 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/gpu-bundle}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
BUILD="$ROOT/build-gpu-bundle"
JOBS="${JOBS:-$(nproc)}"
NVCC="${CUDACXX:-/usr/local/cuda/bin/nvcc}"
[ -x "$NVCC" ] || command -v nvcc >/dev/null || { echo "gpu-bundle: nvcc not found (CUDA toolkit needed to build the bundle)" >&2; exit 1; }
command -v patchelf >/dev/null || { echo "gpu-bundle: patchelf not found (apt-get install patchelf)" >&2; exit 1; }

BINS=(vmoer vmoer_tests bench_cuda bench_ops bench_train bench_routers)
# Without NCCL: the kit's machine has one GPU, and NCCL needs a GPU per rank
# (with one GPU the multi-rank tests sum on the host, as a build without NCCL
# does); libnccl.so.2 alone is ~190 MB, four times what may travel.
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DVMOER_NATIVE=OFF -DVMOER_CUDA=ON -DVMOER_NCCL=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
grep -q '^VMOER_CUDA:BOOL=ON' "$BUILD/CMakeCache.txt" || { echo "gpu-bundle: CMake did not enable CUDA" >&2; exit 1; }
cmake --build "$BUILD" -j "$JOBS" --target "${BINS[@]}"

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"
for b in "${BINS[@]}"; do
  cp "$BUILD/$b" "$OUT/bin/$b"
  strip --strip-unneeded "$OUT/bin/$b"
  patchelf --set-rpath '$ORIGIN/../lib' "$OUT/bin/$b"
done

# Libraries: what the binaries resolve here, minus glibc's own (the target's
# newer glibc runs binaries built against Debian 12's 2.36), the driver, and
# cuBLAS/cuRAND (in every CUDA image; too large to carry).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libcublas|libcublasLt|libcurand)'
for b in "${BINS[@]}"; do ldd "$BUILD/$b"; done | awk '/=>/ && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
  name="$(basename "$lib")"
  if [[ "$name" =~ $skip ]]; then continue; fi
  cp -L "$lib" "$OUT/lib/$name"
  strip --strip-unneeded "$OUT/lib/$name" 2>/dev/null || true
done
for l in "$OUT"/lib/*; do patchelf --set-rpath '$ORIGIN' "$l" 2>/dev/null || true; done

echo "$ROOT" >"$OUT/source_dir"
{
  echo "vmoer GPU bundle"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty tree)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "flags: Release, VMOER_NATIVE=OFF (-march=x86-64-v3), VMOER_CUDA=ON, VMOER_NCCL=OFF, CMAKE_CUDA_ARCHITECTURES=90, $("$NVCC" --version | tail -n 1)"
  echo "source dir compiled in: $ROOT"
  echo "expected from the GPU machine: libcuda (driver), libcublas.so.13 + libcublasLt.so.13 (CUDA image)"
  echo
  du -sh "$OUT/bin" "$OUT/lib"
  for b in "${BINS[@]}"; do
    echo "$b NEEDED: $(patchelf --print-needed "$OUT/bin/$b" | tr '\n' ' ')"
  done
  echo "lib/: $(cd "$OUT/lib" && ls | tr '\n' ' ')"
} >"$OUT/MANIFEST.txt"
KIT="$ROOT/gpu-kit"
mkdir -p "$KIT"
tar -C "$(dirname "$OUT")" -czf "$KIT/bundle.tar.gz" "$(basename "$OUT")"
size_mb=$(( ($(stat -c %s "$KIT/bundle.tar.gz") + 1048575) / 1048576 ))
echo "gpu-bundle: $OUT ($(du -sm "$OUT" | cut -f1) MiB), to carry: $KIT/bundle.tar.gz (${size_mb} MiB)"
if [ "$size_mb" -gt 50 ]; then
  echo "gpu-bundle: the tarball is over 50 MiB; the GPU machine takes at most 64 MiB with the working tree" >&2
  echo "gpu-bundle: largest files:" >&2
  find "$OUT" -type f -printf '%s %p\n' | sort -rn | head -n 5 | awk '{printf "  %6.1f MiB  %s\n", $1 / 1048576, $2}' >&2
  exit 1
fi
