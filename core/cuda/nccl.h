// core/cuda/nccl.h — NCCL collectives on device buffers, for multi-process
// runs with --device cuda (docs/SCALE.md "GPUs"). Plain C++ (no CUDA or NCCL
// headers), like core/cuda/device.h. Compiled in a CUDA build when NCCL is
// found (VMOER_NCCL); core/dist.h is the interface the program uses: it
// passes rank 0's communicator id to the others over MPI and turns a failure
// or a timeout into dist::PeerLost.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

namespace vm::kernels::cuda {

bool nccl_built();
// A new communicator id (rank 0), as bytes to broadcast.
std::string nccl_unique_id();
// Joins the communicator with that id as `rank` of `size` on this thread's device.
void nccl_init(const std::string& id, int rank, int size);
bool nccl_ready();
// Outcome of a collective waited for with a bound.
struct NcclWait {
  bool ok = true;
  std::string why;  // when not ok: "no completion within T s", "signal N", or NCCL's error
};
// Σ over the ranks of n floats in device memory, in place (ncclAllReduce,
// ncclSum) on this thread's stream. Waits for completion polling the stream
// and the communicator's asynchronous error; gives up (and aborts the
// communicator) after timeout_s, or 0.3 s after *signal becomes non-zero.
NcclWait nccl_allreduce_sum(float* dev, int64_t n, double timeout_s, const std::atomic<int>* signal);
// Expert parallelism's all-to-all on device rows (ncclSend/ncclRecv of every
// pair in one ncclGroupStart/End, the member itself included): send holds
// send_n[q] floats for group member q (world rank first + q), members in
// order; recv gets recv_n[q] floats from member q. Bounded like the all-reduce.
NcclWait nccl_alltoallv(const float* send, const int64_t* send_n, float* recv, const int64_t* recv_n, int members,
                        int first, double timeout_s, const std::atomic<int>* signal);
void nccl_finalize();

}  // namespace vm::kernels::cuda
