// kernels/cuda/sort.h — deterministic, stable grouping of positions by an
// integer key on the GPU: the building block of the sort-free-of-atomics
// scatter-adds (embedding backward, MoE dispatch/combine).
//
// A least-significant-digit radix sort over 8-bit digits (1 pass for <= 255
// keys, 2 for <= 65535, ...). Each pass: per-tile digit histograms (tiles of
// 256 positions), one exclusive scan over (digit, tile), and a stable scatter
// (rank within a tile from __match_any_sync plus the counts of earlier warps).
// LSD radix sort is stable, so within a key positions stay in increasing
// order — the order in which the CPU loops visit them. The result does not
// depend on timing: atomics only count, never order.
#pragma once
#include <cstdint>

namespace vm::kernels::cuda {

// keys (n, device): key of each position; keys outside [0, nkeys) are
// excluded (padding, ignored ids, masked tokens).
// perm (n, device): the included positions grouped by key (ascending), in
// increasing position order within a key, followed by the excluded ones.
// offsets (nkeys + 1, device): key k owns perm[offsets[k] .. offsets[k+1]);
// offsets[nkeys] = number of included positions.
// n < 2^31.
void stable_group_by_key(const int32_t* keys, int64_t n, int32_t nkeys, int32_t* perm, int32_t* offsets);

// out[i] = Σ_{j < i} in[j] (exclusive scan of n int32 values; one block).
void exclusive_scan_i32(const int32_t* in, int32_t* out, int64_t n);

}  // namespace vm::kernels::cuda
