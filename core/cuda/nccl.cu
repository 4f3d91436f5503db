// core/cuda/nccl.cu — see nccl.h.
#include "core/cuda/nccl.h"

#include <chrono>
#include <cstring>
#include <thread>

#include "core/cuda/device.cuh"
#ifdef VMOER_HAVE_NCCL
#include <nccl.h>
#endif

namespace vm::kernels::cuda {

#ifdef VMOER_HAVE_NCCL
namespace {
ncclComm_t g_comm = nullptr;

void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess && r != ncclInProgress)
    throw vm::Error(std::string("nccl: ") + what + ": " + ncclGetErrorString(r));
}
}  // namespace

bool nccl_built() { return true; }

std::string nccl_unique_id() {
  ncclUniqueId id;
  nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  return std::string(reinterpret_cast<const char*>(&id), sizeof id);
}

void nccl_init(const std::string& id, int rank, int size) {
  if (g_comm) return;
  if (id.size() != sizeof(ncclUniqueId)) throw vm::Error("nccl: a communicator id of the wrong size");
  ncclUniqueId uid;
  std::memcpy(&uid, id.data(), sizeof uid);
  (void)context();  // this thread's device and stream first
  nccl_check(ncclCommInitRank(&g_comm, size, uid, rank), "ncclCommInitRank");
}

bool nccl_ready() { return g_comm != nullptr; }

namespace {
NcclWait wait_stream(cudaStream_t s, double timeout_s, const std::atomic<int>* signal);
}  // namespace

NcclWait nccl_allreduce_sum(float* dev, int64_t n, double timeout_s, const std::atomic<int>* signal) {
  if (!g_comm) throw vm::Error("nccl: no communicator (nccl_init first)");
  cudaStream_t s = stream();
  nccl_check(ncclAllReduce(dev, dev, (size_t)n, ncclFloat, ncclSum, g_comm, s), "ncclAllReduce");
  return wait_stream(s, timeout_s, signal);
}

NcclWait nccl_alltoallv(const float* send, const int64_t* send_n, float* recv, const int64_t* recv_n, int members,
                        int first, double timeout_s, const std::atomic<int>* signal) {
  if (!g_comm) throw vm::Error("nccl: no communicator (nccl_init first)");
  cudaStream_t s = stream();
  nccl_check(ncclGroupStart(), "ncclGroupStart");
  int64_t so = 0, ro = 0;
  for (int q = 0; q < members; ++q) {
    if (send_n[q] > 0)
      nccl_check(ncclSend(send + so, (size_t)send_n[q], ncclFloat, first + q, g_comm, s), "ncclSend");
    if (recv_n[q] > 0)
      nccl_check(ncclRecv(recv + ro, (size_t)recv_n[q], ncclFloat, first + q, g_comm, s), "ncclRecv");
    so += send_n[q];
    ro += recv_n[q];
  }
  nccl_check(ncclGroupEnd(), "ncclGroupEnd");
  return wait_stream(s, timeout_s, signal);
}

namespace {
// Polls the stream and the communicator's asynchronous error until the
// collective completes; on failure, timeout or signal aborts the communicator.
NcclWait wait_stream(cudaStream_t s, double timeout_s, const std::atomic<int>* signal) {
  NcclWait w;
  const auto t0 = std::chrono::steady_clock::now();
  double sig_at = -1;
  for (;;) {
    cudaError_t q = cudaStreamQuery(s);
    if (q == cudaSuccess) return w;
    if (q != cudaErrorNotReady) {
      w.ok = false;
      w.why = std::string("CUDA error: ") + cudaGetErrorString(q);
      break;
    }
    ncclResult_t a = ncclSuccess;
    ncclCommGetAsyncError(g_comm, &a);
    if (a != ncclSuccess && a != ncclInProgress) {
      w.ok = false;
      w.why = std::string("NCCL error: ") + ncclGetErrorString(a);
      break;
    }
    double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (signal && signal->load()) {
      if (sig_at < 0) sig_at = el;
      else if (el - sig_at > 0.3) {
        w.ok = false;
        w.why = "signal " + std::to_string(signal->load()) + " while waiting: the launcher stops the job when a rank exits";
        break;
      }
    }
    if (el > timeout_s) {
      w.ok = false;
      w.why = "no completion within " + std::to_string((int)timeout_s) + " s, --dist-timeout";
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  ncclCommAbort(g_comm);  // the collective cannot finish: free the GPU's work so the process can end
  g_comm = nullptr;
  return w;
}
}  // namespace

void nccl_finalize() {
  if (g_comm) ncclCommDestroy(g_comm);
  g_comm = nullptr;
}

#else  // a CUDA build without NCCL

bool nccl_built() { return false; }
std::string nccl_unique_id() { throw vm::Error("nccl: this build has no NCCL (VMOER_NCCL=OFF)"); }
void nccl_init(const std::string&, int, int) { throw vm::Error("nccl: this build has no NCCL (VMOER_NCCL=OFF)"); }
bool nccl_ready() { return false; }
NcclWait nccl_allreduce_sum(float*, int64_t, double, const std::atomic<int>*) {
  throw vm::Error("nccl: this build has no NCCL (VMOER_NCCL=OFF)");
}
NcclWait nccl_alltoallv(const float*, const int64_t*, float*, const int64_t*, int, int, double,
                        const std::atomic<int>*) {
  throw vm::Error("nccl: this build has no NCCL (VMOER_NCCL=OFF)");
}
void nccl_finalize() {}

#endif

}  // namespace vm::kernels::cuda
