// core/dist.cpp — see dist.h. MPI is used through its C API, only from the
// main thread (MPI_THREAD_FUNNELED; the OpenMP workers never call it).
#include "core/dist.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#ifdef VMOER_HAVE_MPI
#include <mpi.h>
#endif
#ifdef VMOER_HAVE_CUDA
#include "core/cuda/device.h"
#include "core/cuda/nccl.h"
#endif

namespace vm::dist {

namespace {
int g_rank = 0, g_size = 1;
bool g_mpi = false;  // MPI_Init was called
double g_timeout = 600.0;
std::atomic<int> g_signal{0};
std::atomic<bool> g_line_printed{false};
int g_stderr = 2;  // the real stderr (ranks other than 0 point fd 2 at /dev/null)
std::mutex g_ctx_mu;
std::string g_ctx_prefix, g_ctx_suffix;
uint64_t g_bytes = 0, g_messages = 0;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void write_line(const std::string& line) {
  std::string s = line + "\n";
  ssize_t off = 0;
  while (off < (ssize_t)s.size()) {
    ssize_t w = ::write(g_stderr, s.data() + off, s.size() - off);
    if (w <= 0) break;
    off += w;
  }
}

extern "C" void on_signal_default(int s) { g_signal.store(s); }

// A rank that a signal did not stop on its own within 0.7 s ends here, before
// Open MPI's mpirun sends SIGKILL (1 s after SIGTERM: odls_base_sigkill_timeout).
void watchdog() {
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    int s = g_signal.load();
    if (!s) continue;
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    std::string pre, suf;
    {
      std::lock_guard<std::mutex> lk(g_ctx_mu);
      pre = g_ctx_prefix;
      suf = g_ctx_suffix;
    }
    if (g_rank == 0)
      print_final_line("vmoer: " + (pre.empty() ? std::string() : pre + ": ") + "stopped by signal " +
                       std::to_string(s) + " (the launcher stops every rank when one exits, or the job was cancelled)" +
                       (suf.empty() ? std::string() : "; " + suf));
    hard_exit(128 + s);
  }
}

// The launcher's word on the number of ranks (0: not started by one).
int launcher_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS_MPI"}) {
    const char* s = std::getenv(v);
    if (s && *s) return std::atoi(s);
  }
  return std::getenv("PMIX_RANK") ? 2 : 0;  // PMIx without a size variable: MPI_Init tells
}
}  // namespace

bool built_with_mpi() {
#ifdef VMOER_HAVE_MPI
  return true;
#else
  return false;
#endif
}

int rank() { return g_rank; }
int size() { return g_size; }

void set_timeout(double seconds) {
  if (seconds > 0) g_timeout = seconds;
}
double timeout() { return g_timeout; }
void note_signal(int sig) { g_signal.store(sig); }
int signal_seen() { return g_signal.load(); }
// "<prefix>: msg; <suffix>" with the context of set_context.
static std::string in_context(const std::string& msg) {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  return (g_ctx_prefix.empty() ? std::string() : g_ctx_prefix + ": ") + msg +
         (g_ctx_suffix.empty() ? std::string() : "; " + g_ctx_suffix);
}

void set_context(const std::string& prefix, const std::string& suffix) {
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  g_ctx_prefix = prefix;
  g_ctx_suffix = suffix;
}

bool print_final_line(const std::string& line) {
  bool expected = false;
  if (!g_line_printed.compare_exchange_strong(expected, true)) return false;
  std::fflush(stdout);
  std::fflush(stderr);
  write_line(line);
  return true;
}

void hard_exit(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  ::_exit(code);
}

void rank_failed(const std::string& msg, int code, double seconds) {
  double t0 = now_s();
  while (now_s() - t0 < seconds && !g_signal.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!g_signal.load()) print_final_line("vmoer: rank " + std::to_string(g_rank) + ": " + msg);
  hard_exit(code);
}

void fail_all(const std::string& msg) {
  if (g_size > 1) throw CollectiveError(msg, msg.rfind("--", 0) == 0 ? 2 : 1);
  fail(msg);
}

bool prints_peer_lost(const PeerLost& e) {
  for (int r = 0; r < g_rank; ++r)
    if (std::find(e.ranks.begin(), e.ranks.end(), r) == e.ranks.end()) return false;
  return true;
}

void init(int* argc, char*** argv) {
  int want = launcher_size();
#ifdef VMOER_HAVE_MPI
  if (want > 0) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      std::fprintf(stderr, "vmoer: MPI_Init failed\n");
      std::exit(1);
    }
    g_mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    // Errors come back as codes (and become PeerLost) instead of aborting the job.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
#else
  if (want > 1) {
    const char* r0 = nullptr;  // one line for the job: the launcher's rank 0 says it
    for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
      if (!r0) r0 = std::getenv(v);
    if (r0 && std::atoi(r0) != 0) std::exit(2);
    std::fprintf(stderr,
                 "vmoer: started by an MPI launcher with %d ranks, but this vmoer was built without MPI "
                 "(VMOER_MPI=OFF or no libopenmpi-dev at configure time); every rank would run alone and write the "
                 "same files. Rebuild with MPI, or run one process without mpirun\n",
                 want);
    std::exit(2);
  }
  (void)argc;
  (void)argv;
#endif
  if (g_size <= 1) return;
  const char* keep = std::getenv("VMOER_RANK_OUTPUT");
  if (g_rank != 0 && !(keep && std::string(keep) == "all")) {
    g_stderr = ::dup(2);
    int devnull = ::open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::close(devnull);
    }
  }
  std::signal(SIGINT, on_signal_default);
  std::signal(SIGTERM, on_signal_default);
  std::thread(watchdog).detach();
}

void finalize() {
#ifdef VMOER_HAVE_MPI
  if (g_mpi) MPI_Finalize();
#endif
  g_mpi = false;
}

std::string describe() {
  std::string r = std::to_string(g_size) + (g_size == 1 ? " rank" : " ranks");
#ifdef VMOER_HAVE_MPI
  char lib[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(lib, &len);
  std::string l(lib, (size_t)len);
  l = l.substr(0, l.find_first_of(",\n"));
  return r + " (" + l + ")";
#else
  return r + " (built without MPI)";
#endif
}

namespace {
int g_ep = 1;
uint64_t g_ep_bytes = 0;
}  // namespace
void set_expert_parallel(int P) {
  VM_CHECK(P >= 1 && g_size % P == 0, "dist::set_expert_parallel: " + std::to_string(P) +
                                          " does not divide the " + std::to_string(g_size) + " ranks");
  g_ep = P;
}
int ep_size() { return g_ep; }
int ep_rank() { return g_rank % g_ep; }
uint64_t ep_bytes_sent() { return g_ep_bytes; }

uint64_t bytes_sent() { return g_bytes; }
uint64_t messages_sent() { return g_messages; }
static double g_exchange_s = 0;
double exchange_seconds() { return g_exchange_s; }
namespace {
struct ExchangeTimer {  // adds the wall time of one exchange to g_exchange_s
  double t0 = now_s();
  ~ExchangeTimer() { g_exchange_s += now_s() - t0; }
};
}  // namespace

// ---- TreeSum ---------------------------------------------------------------------------------
TreeSum::TreeSum()
    : TreeSumOf<std::vector<float>>([](std::vector<float>& a, const std::vector<float>& b) {
        VM_CHECK(a.size() == b.size(), "TreeSum: leaves of " + std::to_string(a.size()) + " and " +
                                           std::to_string(b.size()) + " values");
        for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
      }) {}

// ---- exchanges -----------------------------------------------------------------------------------
uint64_t allreduce_bytes(int64_t n, int64_t bucket, int ranks, int r) {
  if (ranks <= 1) return 0;
  uint64_t b = 0;
  for (int64_t b0 = 0; b0 < n; b0 += bucket) {
    int64_t L = std::min(bucket, n - b0);
    int64_t Lr = (int64_t)(r + 1) * L / ranks - (int64_t)r * L / ranks;
    b += 4 * (uint64_t)((L - Lr) + (int64_t)(ranks - 1) * Lr);
  }
  return b;
}

#ifdef VMOER_HAVE_MPI
namespace {
int g_seq = 0;
int next_tag() { return (g_seq++) & 0x7fff; }  // every rank runs the same exchanges in the same order

struct Pending {
  MPI_Request req;
  int peer;
};

std::string ranks_text(const std::vector<int>& rs) {
  std::string s = rs.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < rs.size(); ++i) s += (i ? "," : "") + std::to_string(rs[i]);
  return s;
}

[[noreturn]] void lost(std::vector<Pending>& p, const char* what, const std::string& why) {
  std::vector<int> rs;
  for (auto& x : p)
    if (x.req != MPI_REQUEST_NULL && std::find(rs.begin(), rs.end(), x.peer) == rs.end()) rs.push_back(x.peer);
  std::sort(rs.begin(), rs.end());
  std::string who = rs.empty() ? std::string("a peer") : ranks_text(rs);
  throw PeerLost(in_context(who + " did not answer in the " + std::string(what) + " (" + why + ")"), rs);
}

// Waits for every request; bounded by the timeout and by a signal (then 0.3 s of grace).
void wait_all(std::vector<Pending>& p, const char* what) {
  const double t0 = now_s();
  double sig_at = -1;
  int spins = 0;
  for (;;) {
    bool all = true;
    for (auto& x : p) {
      if (x.req == MPI_REQUEST_NULL) continue;
      int flag = 0;
      int rc = MPI_Test(&x.req, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) {
        char es[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, es, &len);
        std::vector<Pending> one{x};
        lost(one, what, "MPI error: " + std::string(es, (size_t)len));
      }
      if (!flag) all = false;
    }
    if (all) return;
    double el = now_s() - t0;
    if (int s = g_signal.load()) {
      if (sig_at < 0) sig_at = el;
      else if (el - sig_at > 0.3)
        lost(p, what, "signal " + std::to_string(s) + " while waiting: the launcher stops the job when a rank exits");
    }
    if (el > g_timeout) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "no message within %.0f s, --dist-timeout", g_timeout);
      lost(p, what, buf);
    }
    // Spin briefly (exchanges between ranks in lockstep finish in microseconds),
    // then sleep: a rank waiting for a slower one must not take its core.
    if (++spins < 200) sched_yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(spins < 1000 ? 50 : 500));
  }
}

void post_send(std::vector<Pending>& p, const void* buf, size_t bytes, int peer, int tag) {
  VM_CHECK(bytes <= (size_t)INT_MAX, "dist: a message of " + std::to_string(bytes) + " bytes (more than 2 GiB)");
  Pending x{MPI_REQUEST_NULL, peer};
  MPI_Isend(buf, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &x.req);
  g_bytes += bytes;
  g_messages += 1;
  p.push_back(x);
}
void post_recv(std::vector<Pending>& p, void* buf, size_t bytes, int peer, int tag) {
  VM_CHECK(bytes <= (size_t)INT_MAX, "dist: a message of " + std::to_string(bytes) + " bytes (more than 2 GiB)");
  Pending x{MPI_REQUEST_NULL, peer};
  MPI_Irecv(buf, (int)bytes, MPI_BYTE, peer, tag, MPI_COMM_WORLD, &x.req);
  p.push_back(x);
}
}  // namespace

std::vector<std::string> allgather(const std::string& mine, const char* what) {
  if (g_size == 1) return {mine};
  ExchangeTimer timer;
  const int N = g_size, r = g_rank;
  std::vector<uint64_t> sizes((size_t)N, 0);
  sizes[(size_t)r] = mine.size();
  uint64_t my_size = mine.size();
  {
    std::vector<Pending> p;
    int tag = next_tag();
    for (int j = 0; j < N; ++j)
      if (j != r) {
        post_recv(p, &sizes[(size_t)j], 8, j, tag);
        post_send(p, &my_size, 8, j, tag);
      }
    wait_all(p, what);
  }
  std::vector<std::string> out((size_t)N);
  out[(size_t)r] = mine;
  std::vector<Pending> p;
  int tag = next_tag();
  for (int j = 0; j < N; ++j) {
    if (j == r) continue;
    out[(size_t)j].resize(sizes[(size_t)j]);
    if (sizes[(size_t)j]) post_recv(p, out[(size_t)j].data(), sizes[(size_t)j], j, tag);
    if (!mine.empty()) post_send(p, mine.data(), mine.size(), j, tag);
  }
  wait_all(p, what);
  return out;
}

std::string broadcast(const std::string& from_root, const char* what) {
  if (g_size == 1) return from_root;
  ExchangeTimer timer;
  uint64_t n = g_rank == 0 ? from_root.size() : 0;
  {
    std::vector<Pending> p;
    int tag = next_tag();
    if (g_rank == 0)
      for (int j = 1; j < g_size; ++j) post_send(p, &n, 8, j, tag);
    else
      post_recv(p, &n, 8, 0, tag);
    wait_all(p, what);
  }
  std::string out = g_rank == 0 ? from_root : std::string(n, '\0');
  std::vector<Pending> p;
  int tag = next_tag();
  if (n) {
    if (g_rank == 0)
      for (int j = 1; j < g_size; ++j) post_send(p, out.data(), n, j, tag);
    else
      post_recv(p, out.data(), n, 0, tag);
  }
  wait_all(p, what);
  return out;
}

void allreduce_sum(float* x, int64_t n, int64_t bucket, const char* what) {
  if (g_size == 1 || n == 0) return;
  std::vector<int> all((size_t)g_size);
  for (int j = 0; j < g_size; ++j) all[(size_t)j] = j;
  allreduce_sum_among(x, n, bucket, all, what);
}

void allreduce_sum_among(float* x, int64_t n, int64_t bucket, const std::vector<int>& members, const char* what) {
  const int N = (int)members.size();
  const int r = (int)(std::find(members.begin(), members.end(), g_rank) - members.begin());
  VM_CHECK(r < N, "dist::allreduce_sum_among: rank " + std::to_string(g_rank) + " is not a member");
  if (N == 1 || n == 0) return;
  VM_CHECK(bucket > 0, "dist::allreduce_sum: bucket must be positive");
  ExchangeTimer timer;
  // chunk j of a bucket is reduced by members[j]; j, r below are places in `members`
  for (int64_t b0 = 0; b0 < n; b0 += bucket) {
    const int64_t L = std::min(bucket, n - b0);
    auto lo = [&](int j) { return b0 + (int64_t)j * L / N; };  // chunk j: [lo(j), lo(j+1))
    const int64_t my0 = lo(r), myn = lo(r + 1) - lo(r);
    // reduce-scatter: chunk j of every rank goes to rank j
    std::vector<std::vector<float>> got((size_t)N);
    {
      std::vector<Pending> p;
      int tag = next_tag();
      for (int j = 0; j < N; ++j) {
        if (j == r) continue;
        got[(size_t)j].resize((size_t)myn);
        if (myn) post_recv(p, got[(size_t)j].data(), (size_t)myn * 4, members[(size_t)j], tag);
        int64_t jn = lo(j + 1) - lo(j);
        if (jn) post_send(p, x + lo(j), (size_t)jn * 4, members[(size_t)j], tag);
      }
      wait_all(p, what);
    }
    // Σ over ranks of my chunk, in the fixed tree over rank order
    TreeSum t;
    for (int j = 0; j < N; ++j)
      t.add(j == r ? std::vector<float>(x + my0, x + my0 + myn) : std::move(got[(size_t)j]));
    std::vector<float> sum = t.take();
    std::copy(sum.begin(), sum.end(), x + my0);
    // all-gather: my reduced chunk to everyone
    std::vector<Pending> p;
    int tag = next_tag();
    for (int j = 0; j < N; ++j) {
      if (j == r) continue;
      int64_t jn = lo(j + 1) - lo(j);
      if (jn) post_recv(p, x + lo(j), (size_t)jn * 4, members[(size_t)j], tag);
      if (myn) post_send(p, x + my0, (size_t)myn * 4, members[(size_t)j], tag);
    }
    wait_all(p, what);
  }
}

void ep_alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                  const std::vector<int64_t>& recv_rows, int64_t width, const char* what) {
  const int P = g_ep, me = g_rank % P, first = g_rank - me;
  VM_CHECK((int)send_rows.size() == P && (int)recv_rows.size() == P,
           std::string("dist::ep_alltoallv: row counts for ") + std::to_string(send_rows.size()) + " members, not " +
               std::to_string(P));
  std::vector<int64_t> s0(P + 1, 0), r0(P + 1, 0);
  for (int q = 0; q < P; ++q) s0[q + 1] = s0[q] + send_rows[q], r0[q + 1] = r0[q] + recv_rows[q];
  VM_CHECK(send_rows[me] == recv_rows[me], "dist::ep_alltoallv: " + std::to_string(send_rows[me]) +
                                               " rows to itself but " + std::to_string(recv_rows[me]) + " expected");
  if (send_rows[me] > 0)
    std::memcpy(recv + r0[me] * width, send + s0[me] * width, sizeof(float) * (size_t)(send_rows[me] * width));
  if (P == 1) return;
  ExchangeTimer timer;
  std::vector<Pending> p;
  const int tag = next_tag();
  const uint64_t b0 = g_bytes;
  for (int k = 1; k < P; ++k) {  // member me+k receives first: every pair posts in the same order
    const int to = (me + k) % P, from = (me - k + P) % P;
    if (recv_rows[from] > 0)
      post_recv(p, recv + r0[from] * width, sizeof(float) * (size_t)(recv_rows[from] * width), first + from, tag);
    if (send_rows[to] > 0)
      post_send(p, send + s0[to] * width, sizeof(float) * (size_t)(send_rows[to] * width), first + to, tag);
  }
  wait_all(p, what);
  g_ep_bytes += g_bytes - b0;
}

std::vector<int64_t> ep_alltoall_ints(const std::vector<int64_t>& send, int k, const char* what) {
  const int P = g_ep, me = g_rank % P, first = g_rank - me;
  VM_CHECK((int64_t)send.size() == (int64_t)P * k, "dist::ep_alltoall_ints: " + std::to_string(send.size()) +
                                                       " values for " + std::to_string(P) + " blocks of " +
                                                       std::to_string(k));
  std::vector<int64_t> out(send.size());
  std::copy(send.begin() + (ptrdiff_t)me * k, send.begin() + (ptrdiff_t)(me + 1) * k, out.begin() + (ptrdiff_t)me * k);
  if (P == 1 || k == 0) return out;
  ExchangeTimer timer;
  std::vector<Pending> p;
  const int tag = next_tag();
  const uint64_t b0 = g_bytes;
  for (int j = 1; j < P; ++j) {
    const int to = (me + j) % P, from = (me - j + P) % P;
    post_recv(p, out.data() + (size_t)from * k, 8 * (size_t)k, first + from, tag);
    post_send(p, send.data() + (size_t)to * k, 8 * (size_t)k, first + to, tag);
  }
  wait_all(p, what);
  g_ep_bytes += g_bytes - b0;
  return out;
}

#else  // one rank: nothing to exchange

std::vector<std::string> allgather(const std::string& mine, const char*) { return {mine}; }
std::string broadcast(const std::string& from_root, const char*) { return from_root; }
void allreduce_sum(float*, int64_t, int64_t, const char*) {}
void allreduce_sum_among(float*, int64_t, int64_t, const std::vector<int>&, const char*) {}
void ep_alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                  const std::vector<int64_t>& recv_rows, int64_t width, const char*) {
  VM_CHECK(send_rows.size() == 1 && recv_rows.size() == 1 && send_rows[0] == recv_rows[0],
           "dist::ep_alltoallv: one rank exchanges with itself only");
  if (send_rows[0] > 0) std::memcpy(recv, send, sizeof(float) * (size_t)(send_rows[0] * width));
}
std::vector<int64_t> ep_alltoall_ints(const std::vector<int64_t>& send, int, const char*) { return send; }

#endif

bool nccl_built() {
#ifdef VMOER_HAVE_CUDA
  return kernels::cuda::nccl_built();
#else
  return false;
#endif
}

namespace {
bool g_nccl_usable = false;
int env_int(std::initializer_list<const char*> names, int fallback) {
  for (const char* v : names)
    if (const char* s = std::getenv(v); s && *s) return std::atoi(s);
  return fallback;
}
}  // namespace

void use_local_gpu() {
#ifdef VMOER_HAVE_CUDA
  static bool done = false;
  if (done || g_size == 1) return;
  done = true;
  int local = env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"}, 0);
  int local_size = env_int({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMIX_LOCAL_SIZE"}, g_size);
  kernels::cuda::select_device(local);
  // Every rank on its own GPU, on every machine (the ranks agree: one of them
  // short of GPUs sends every rank's device gradients through the host).
  bool mine = kernels::cuda::nccl_built() && local_size <= kernels::cuda::cuda_device_count();
  bool all = true;
  for (const std::string& v : allgather(std::string(1, mine ? '1' : '0'), "GPU placement")) all = all && v == "1";
  g_nccl_usable = all;
#endif
}

bool nccl_usable() { return g_nccl_usable; }

void ep_device_alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                         const std::vector<int64_t>& recv_rows, int64_t width, const char* what) {
#ifdef VMOER_HAVE_CUDA
  const int P = g_ep, me = g_rank % P, first = g_rank - me;
  VM_CHECK((int)send_rows.size() == P && (int)recv_rows.size() == P,
           "dist::ep_device_alltoallv: row counts for " + std::to_string(send_rows.size()) + " members, not " +
               std::to_string(P));
  int64_t ns = 0, nr = 0;
  for (int q = 0; q < P; ++q) ns += send_rows[q] * width, nr += recv_rows[q] * width;
  if (!g_nccl_usable || P == 1) {  // through the host
    std::vector<float> hs((size_t)ns), hr((size_t)nr);
    if (ns) kernels::cuda::copy_d2h(hs.data(), send, sizeof(float) * (size_t)ns);
    ep_alltoallv(hs.data(), send_rows, hr.data(), recv_rows, width, what);
    if (nr) kernels::cuda::copy_h2d(recv, hr.data(), sizeof(float) * (size_t)nr);
    return;
  }
  if (!kernels::cuda::nccl_ready())
    kernels::cuda::nccl_init(broadcast(g_rank == 0 ? kernels::cuda::nccl_unique_id() : std::string(), what), g_rank,
                             g_size);
  std::vector<int64_t> sn((size_t)P), rn((size_t)P);
  for (int q = 0; q < P; ++q) {
    sn[q] = send_rows[q] * width, rn[q] = recv_rows[q] * width;
    if (q != me) g_bytes += 4 * (uint64_t)sn[q], g_ep_bytes += 4 * (uint64_t)sn[q];
  }
  ExchangeTimer timer;
  kernels::cuda::NcclWait w =
      kernels::cuda::nccl_alltoallv(send, sn.data(), recv, rn.data(), P, first, g_timeout, &g_signal);
  if (!w.ok) {
    std::vector<int> peers;
    for (int q = 0; q < P; ++q)
      if (q != me) peers.push_back(first + q);
    throw PeerLost(in_context("the " + std::string(what) + " over NCCL did not complete (" + w.why + ")"), peers);
  }
#else
  (void)send, (void)send_rows, (void)recv, (void)recv_rows, (void)width;
  fail(std::string(what) + ": a device all-to-all needs a CUDA build");
#endif
}

void device_allreduce_sum(float* dev, int64_t n, const char* what) {
  if (g_size == 1 || n == 0) return;
#ifdef VMOER_HAVE_CUDA
  if (!kernels::cuda::nccl_ready())
    kernels::cuda::nccl_init(broadcast(g_rank == 0 ? kernels::cuda::nccl_unique_id() : std::string(), what), g_rank,
                             g_size);
  // Every rank sends and receives 2(N − 1)/N of the buffer in NCCL's ring (counted as 8(N − 1)/N · n bytes).
  g_bytes += (uint64_t)(8.0 * (double)(g_size - 1) / g_size * (double)n);
  ExchangeTimer timer;
  kernels::cuda::NcclWait w = kernels::cuda::nccl_allreduce_sum(dev, n, g_timeout, &g_signal);
  if (!w.ok) {
    std::vector<int> all;
    for (int r = 0; r < g_size; ++r)
      if (r != g_rank) all.push_back(r);
    throw PeerLost(in_context("the " + std::string(what) + " over NCCL did not complete (" + w.why + ")"), all);
  }
#else
  (void)dev;
  fail(std::string(what) + ": a device all-reduce needs a CUDA build");
#endif
}

void barrier(const char* what) {
  if (g_size > 1) allgather(std::string(), what);
}

bool root_says(bool mine, const char* what) {
  if (g_size == 1) return mine;
  return broadcast(std::string(1, mine ? '1' : '0'), what) == "1";
}

void agree(const std::string& my_error, int code, const char* what) {
  if (g_size == 1) {
    if (!my_error.empty()) throw CollectiveError(my_error, code);
    return;
  }
  std::string mine;
  if (!my_error.empty()) mine = std::to_string(code) + ":" + my_error;
  std::vector<std::string> all = allgather(mine, what);
  for (int j = 0; j < (int)all.size(); ++j) {
    const std::string& s = all[(size_t)j];
    if (s.empty()) continue;
    size_t colon = s.find(':');
    int c = std::atoi(s.substr(0, colon).c_str());
    std::string msg = s.substr(colon + 1);
    throw CollectiveError(j == 0 ? msg : "rank " + std::to_string(j) + ": " + msg, c);
  }
}

void on_root(const char* what, const std::function<void()>& fn) {
  if (g_size == 1) {
    fn();
    return;
  }
  std::string err;
  int code = 1;
  if (g_rank == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = e.what();
      code = err.rfind("--", 0) == 0 ? 2 : 1;
    }
  }
  std::string verdict = broadcast(err.empty() ? std::string() : std::to_string(code) + ":" + err, what);
  if (verdict.empty()) return;
  size_t colon = verdict.find(':');
  throw CollectiveError(verdict.substr(colon + 1), std::atoi(verdict.substr(0, colon).c_str()));
}

}  // namespace vm::dist
