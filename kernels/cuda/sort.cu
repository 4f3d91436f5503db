// kernels/cuda/sort.cu — stable radix grouping by key (see sort.h).
#include "core/cuda/device.cuh"
#include "kernels/cuda/sort.h"

namespace vm::kernels::cuda {
using namespace detail;

namespace {
constexpr int kTile = 256;  // positions per tile = threads per block
constexpr int kWarps = kTile / 32;
constexpr int kScanThreads = 1024;

__global__ void init_keys(const int32_t* __restrict__ keys, int32_t* __restrict__ k, int32_t* __restrict__ v, int64_t n,
                          int32_t nkeys) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int32_t key = keys[i];
    k[i] = (key >= 0 && key < nkeys) ? key : nkeys;  // excluded -> sentinel bucket after every real key
    v[i] = (int32_t)i;
  }
}

// counts[d * ntiles + tile] = number of positions of `tile` whose digit is d.
__global__ void tile_histogram(const int32_t* __restrict__ k, int64_t n, int shift, int32_t* __restrict__ counts,
                               int64_t ntiles) {
  __shared__ int32_t h[256];
  h[threadIdx.x] = 0;
  __syncthreads();
  int64_t i = (int64_t)blockIdx.x * kTile + threadIdx.x;
  if (i < n) atomicAdd(&h[(k[i] >> shift) & 255], 1);  // counting only: order-free
  __syncthreads();
  counts[(int64_t)threadIdx.x * ntiles + blockIdx.x] = h[threadIdx.x];
}

// Stable scatter of one tile: destination = start of (digit, tile) + rank of
// the position among same-digit positions earlier in the tile.
__global__ void tile_scatter(const int32_t* __restrict__ k_in, const int32_t* __restrict__ v_in,
                             int32_t* __restrict__ k_out, int32_t* __restrict__ v_out, int64_t n, int shift,
                             const int32_t* __restrict__ starts, int64_t ntiles) {
  __shared__ int32_t wc[kWarps][256];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int d = lane; d < 256; d += 32) wc[warp][d] = 0;
  __syncthreads();
  const int64_t i = (int64_t)blockIdx.x * kTile + threadIdx.x;
  const bool valid = i < n;
  const int32_t key = valid ? k_in[i] : 0;
  const int digit = valid ? ((key >> shift) & 255) : 256 + lane;  // invalid lanes never match a real digit
  const unsigned peers = __match_any_sync(0xffffffffu, digit);
  const unsigned lt = (1u << lane) - 1u;
  const int rank_in_warp = __popc(peers & lt);
  if (valid && rank_in_warp == 0) wc[warp][digit] = __popc(peers);
  __syncthreads();
  if (!valid) return;
  int rank = rank_in_warp;
  for (int w = 0; w < warp; ++w) rank += wc[w][digit];
  const int64_t dst = (int64_t)starts[(int64_t)digit * ntiles + blockIdx.x] + rank;
  k_out[dst] = key;
  v_out[dst] = v_in[i];
}

// Exclusive scan in one block: thread t scans a contiguous segment.
__global__ void scan_1block(const int32_t* __restrict__ in, int32_t* __restrict__ out, int64_t n) {
  __shared__ int32_t sums[kScanThreads];
  const int t = threadIdx.x;
  const int64_t seg = (n + kScanThreads - 1) / kScanThreads;
  const int64_t a = min(n, (int64_t)t * seg), b = min(n, a + seg);
  int32_t s = 0;
  for (int64_t i = a; i < b; ++i) s += in[i];
  sums[t] = s;
  __syncthreads();
  for (int off = 1; off < kScanThreads; off <<= 1) {  // Hillis–Steele inclusive scan of the segment sums
    int32_t v = t >= off ? sums[t - off] : 0;
    __syncthreads();
    sums[t] += v;
    __syncthreads();
  }
  int32_t run = t ? sums[t - 1] : 0;
  for (int64_t i = a; i < b; ++i) {
    int32_t x = in[i];
    out[i] = run;
    run += x;
  }
}

// offsets[k] = first position of the sorted keys with key >= k (lower bound).
__global__ void key_offsets(const int32_t* __restrict__ sorted, int64_t n, int32_t nkeys, int32_t* __restrict__ offsets) {
  for (int64_t kk = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; kk <= nkeys; kk += (int64_t)gridDim.x * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      int64_t mid = (lo + hi) >> 1;
      if (sorted[mid] < (int32_t)kk) lo = mid + 1;
      else hi = mid;
    }
    offsets[kk] = (int32_t)lo;
  }
}
}  // namespace

void exclusive_scan_i32(const int32_t* in, int32_t* out, int64_t n) {
  if (n <= 0) return;
  scan_1block<<<1, kScanThreads, 0, stream()>>>(in, out, n);
  CUDA_CHECK_LAUNCH();
}

void stable_group_by_key(const int32_t* keys, int64_t n, int32_t nkeys, int32_t* perm, int32_t* offsets) {
  if (nkeys < 0) throw vm::Error("cuda stable_group_by_key: nkeys < 0");
  if (n >= INT32_MAX) throw vm::Error("cuda stable_group_by_key: n must be < 2^31");
  if (n <= 0) {
    fill_bytes(offsets, 0, sizeof(int32_t) * ((size_t)nkeys + 1));
    return;
  }
  int bits = 0;
  while (bits < 31 && ((int64_t)1 << bits) <= (int64_t)nkeys) ++bits;  // keys in [0, nkeys]: sentinel included
  const int passes = (bits + 7) / 8;
  const int64_t ntiles = (n + kTile - 1) / kTile;
  DeviceBuffer<int32_t> ka((size_t)n), kb((size_t)n), vb((size_t)n), counts((size_t)(256 * ntiles)),
      starts((size_t)(256 * ntiles));
  int32_t *k_in = ka.data(), *k_out = kb.data();
  // values ping-pong between perm and vb so that the last pass writes perm
  int32_t* v_bufs[2] = {perm, vb.data()};
  int cur = passes % 2 == 0 ? 0 : 1;
  init_keys<<<grid_for(n, 256), 256, 0, stream()>>>(keys, k_in, v_bufs[cur], n, nkeys);
  CUDA_CHECK_LAUNCH();
  for (int p = 0; p < passes; ++p) {
    const int shift = 8 * p;
    tile_histogram<<<(unsigned)ntiles, kTile, 0, stream()>>>(k_in, n, shift, counts.data(), ntiles);
    CUDA_CHECK_LAUNCH();
    exclusive_scan_i32(counts.data(), starts.data(), 256 * ntiles);
    tile_scatter<<<(unsigned)ntiles, kTile, 0, stream()>>>(k_in, v_bufs[cur], k_out, v_bufs[cur ^ 1], n, shift,
                                                          starts.data(), ntiles);
    CUDA_CHECK_LAUNCH();
    std::swap(k_in, k_out);
    cur ^= 1;
  }
  // cur == 0: perm holds the result; k_in the sorted keys.
  key_offsets<<<grid_for((int64_t)nkeys + 1, 256), 256, 0, stream()>>>(k_in, n, nkeys, offsets);
  CUDA_CHECK_LAUNCH();
}

}  // namespace vm::kernels::cuda
