// core/dist.h — the processes of a multi-process run (MPI; docs/SCALE.md).
//
// `mpirun -np N vmoer ...` (or srun) starts N copies of the program; each is a
// rank r in [0, N). Without a launcher, or in a build without MPI
// (VMOER_MPI=OFF), there is one rank and every exchange below returns at once.
//
// Every exchange is built from non-blocking point-to-point messages that this
// file waits for itself, so that
//   * a sum is reduced in a fixed order on every MPI implementation (the
//     binary-counter tree of TreeSum over the ranks, never MPI_SUM), which is
//     what makes a data-parallel run bitwise reproducible;
//   * no wait is unbounded: a peer that has not answered within timeout()
//     seconds, or a signal while waiting (the launcher tearing the job down
//     after a rank died), throws PeerLost naming the ranks that did not answer;
//   * the bytes each rank sends are counted (bytes_sent), for docs/SCALE.md's
//     formulae and the test that checks them.
// Every rank must call the exchanges in the same order (the program is the
// same on every rank; decisions that read the clock or the file system go
// through root_says so that every rank takes the same branch).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace vm::dist {

// ---- the layout ---------------------------------------------------------------------------
// Initialises MPI when an MPI launcher started this process (Open MPI's
// OMPI_COMM_WORLD_SIZE, PMI_SIZE of MPICH/Slurm, PMIX_RANK), else nothing. With
// more than one rank: ranks other than 0 send stdout and stderr to /dev/null
// (VMOER_RANK_OUTPUT=all keeps them), SIGINT/SIGTERM are noted (signal()),
// and a watchdog thread ends a rank that a signal did not stop within 0.7 s
// with one line (Open MPI's mpirun sends SIGKILL 1 s after SIGTERM).
void init(int* argc, char*** argv);
// MPI_Finalize after a normal end (every rank alive and done with its exchanges).
void finalize();
int rank();
int size();
inline bool root() { return rank() == 0; }
inline bool active() { return size() > 1; }
bool built_with_mpi();
// "2 ranks (Open MPI v4.1.4)", "1 rank (built without MPI)": for provenance blocks.
std::string describe();

// ---- bounded waits --------------------------------------------------------------------------
void set_timeout(double seconds);  // --dist-timeout (default 600 s); <= 0 keeps the default
double timeout();
// Async-signal-safe: the program's SIGINT/SIGTERM handlers call it (the
// trainer installs its own and forwards); a wait that sees it gives up 0.3 s
// later with PeerLost naming whoever has not answered.
void note_signal(int sig);
int signal_seen();
// Where the program is, for the lines of a lost peer and of the watchdog:
// "<prefix>: rank 1 did not answer ...; <suffix>" (the trainer: "step 5" and
// "stopped, last good checkpoint: run/last.safetensors (step 4)"); empty
// strings: none. Thread-safe.
void set_context(const std::string& prefix, const std::string& suffix);

// A peer did not answer: dead, hung, or the job is being stopped.
struct PeerLost : Error {
  std::vector<int> ranks;  // the ranks this one was waiting for
  PeerLost(const std::string& msg, std::vector<int> r) : Error(msg), ranks(std::move(r)) {}
};
// The same error on every rank, agreed through an exchange (agree, on_root):
// rank 0 prints it, the others exit with the same code silently.
struct CollectiveError : Error {
  int code;
  CollectiveError(const std::string& msg, int c) : Error(msg), code(c) {}
};
// An error every rank finds at the same point from the same inputs: a
// CollectiveError when several ranks run (rank 0 prints it; exit code 2 when
// the message names a flag, "--...", else 1), else vm::fail.
[[noreturn]] void fail_all(const std::string& msg);
// Whether this rank should print a PeerLost error: it is the lowest rank that
// is still answering in its own view (every rank below it is in e.ranks).
bool prints_peer_lost(const PeerLost& e);
// Prints `line` once per process (the first caller wins, the watchdog included)
// on the process's real stderr; returns false if a line was printed already.
bool print_final_line(const std::string& line);
// Ends the process at once, without MPI_Finalize (a peer may be gone).
[[noreturn]] void hard_exit(int code);
// A non-root rank that failed on its own: wait up to `seconds` for the
// launcher's signal (another rank failed first, the job is going down: stay
// silent), else print "vmoer: rank R: msg". Then hard_exit(code).
[[noreturn]] void rank_failed(const std::string& msg, int code, double seconds = 2.0);

// ---- exchanges (no-ops on one rank) ---------------------------------------------------------------
// Every rank's bytes, in rank order. `what` names the exchange in errors.
std::vector<std::string> allgather(const std::string& mine, const char* what);
// Rank 0's bytes on every rank.
std::string broadcast(const std::string& from_root, const char* what);
void barrier(const char* what);
// x (n floats, the same n on every rank) becomes Σ_r x_r on every rank,
// element by element in the fixed TreeSum order over the ranks, whatever the
// MPI library. Buckets of `bucket` floats, each a reduce-scatter then an
// all-gather over N chunks ([j·L/N, (j+1)·L/N) of a bucket of L floats):
// rank r sends 4·((L − L_r) + (N − 1)·L_r) bytes per bucket (L_r its chunk).
void allreduce_sum(float* x, int64_t n, int64_t bucket, const char* what);
// The same among `members` only (ranks in increasing order, this rank one of
// them): the tree runs over the members in their order, member j reducing
// chunk j. Every rank makes the same call at the same point, each with its own
// set (sets that partition the ranks, the same n), so that the exchanges'
// tags stay in step on every rank. Bytes: those
// of allreduce_bytes(n, bucket, members.size(), this rank's place). The
// expert gradients of --expert-parallel P run in the replica set
// {q, q + P, q + 2P, ...} of their owners (docs/SCALE.md §8).
void allreduce_sum_among(float* x, int64_t n, int64_t bucket, const std::vector<int>& members, const char* what);
// Bytes rank r sends in allreduce_sum(n, bucket) (the formula above).
uint64_t allreduce_bytes(int64_t n, int64_t bucket, int ranks, int r);
// Rank 0's value of a decision (a file exists, the clock passed a limit), so
// that every rank takes the same branch.
bool root_says(bool mine, const char* what);
// Every rank reports "" (fine) or an error message; when any failed, every
// rank throws the same CollectiveError: the lowest failing rank's message
// (prefixed "rank R: " when R != 0) and code.
void agree(const std::string& my_error, int code, const char* what);
// fn runs on rank 0 only; its outcome is agreed (a vm::Error it throws
// becomes the same CollectiveError on every rank; exit code 2 when its
// message names a flag, "--...", else 1).
void on_root(const char* what, const std::function<void()>& fn);

// ---- expert parallelism (--expert-parallel P; docs/SCALE.md) --------------------------------------
// The N ranks form N/P expert groups of P consecutive ranks: group g is ranks
// [g·P, (g+1)·P), and member q of a group (ep_rank() = rank mod P) owns the
// experts [q·E/P, (q+1)·E/P) of every MoE layer. The tokens of one micro-batch
// shard travel only inside its group; the non-expert gradients are summed
// over every rank, an expert's over its replica set {q, q + P, ...} only
// (allreduce_sum_among; docs/SCALE.md §8).
// P must divide size() (the caller checks; set once, before any exchange).
void set_expert_parallel(int P);
int ep_size();   // P; 1 = no expert parallelism
int ep_rank();   // this rank's place in its group, rank() mod P
// Rows of `width` floats between the members of this rank's group (the
// semantics of MPI_Alltoallv, on bounded point-to-point messages like every
// exchange here): send holds send_rows[q] rows for member q, members in
// order; recv gets recv_rows[q] rows from member q, members in order (the
// rows to itself are copied, not sent). Both row counts must be those the
// peers use (the caller knows them: ep_alltoall_ints). No-op copy when P = 1.
void ep_alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                  const std::vector<int64_t>& recv_rows, int64_t width, const char* what);
// k int64 values to every member of the group (send: P blocks of k, block q
// for member q) -> P blocks of k, block q from member q.
std::vector<int64_t> ep_alltoall_ints(const std::vector<int64_t>& send, int k, const char* what);
// ep_alltoallv on device rows (--device cuda): through NCCL (ncclSend/ncclRecv
// in a group) when every rank has its own GPU (nccl_usable), else staged
// through the host exchange. Bounded like every exchange.
void ep_device_alltoallv(const float* send, const std::vector<int64_t>& send_rows, float* recv,
                         const std::vector<int64_t>& recv_rows, int64_t width, const char* what);
// Bytes this rank sent in the exchanges above (a part of bytes_sent()).
uint64_t ep_bytes_sent();

// ---- bytes for an exchange --------------------------------------------------------------------
// Values appended in order and read back in the same order (raw bytes: a
// double comes back bit for bit).
class Pack {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <class T>
  void put_vec(const std::vector<T>& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put<uint64_t>(v.size());
    buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  void put_str(const std::string& s) {
    put<uint64_t>(s.size());
    buf_ += s;
  }
  const std::string& bytes() const { return buf_; }

 private:
  std::string buf_;
};
class Unpack {
 public:
  explicit Unpack(const std::string& b) : b_(b) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  template <class T>
  std::vector<T> get_vec() {
    uint64_t n = get<uint64_t>();
    need(n * sizeof(T));
    std::vector<T> v((size_t)n);
    if (n) std::memcpy(v.data(), b_.data() + at_, n * sizeof(T));
    at_ += n * sizeof(T);
    return v;
  }
  std::string get_str() {
    uint64_t n = get<uint64_t>();
    need(n);
    std::string s = b_.substr(at_, n);
    at_ += n;
    return s;
  }
  bool done() const { return at_ == b_.size(); }

 private:
  void need(uint64_t n) const {
    if (n > b_.size() - at_) fail("dist: a peer's record is shorter than expected (ranks running different programs?)");
  }
  const std::string& b_;
  size_t at_ = 0;
};

// ---- device buffers (--device cuda; docs/SCALE.md "GPUs") ----------------------------------------
// A CUDA build with NCCL (VMOER_NCCL).
bool nccl_built();
// NCCL can run: built, and use_local_gpu gave every rank of this machine its
// own GPU (NCCL does not put two ranks of one communicator on one device;
// with fewer GPUs than ranks the device gradients go through the host).
bool nccl_usable();
// Several ranks on one machine: this rank's GPU is its local rank (Open MPI's
// OMPI_COMM_WORLD_LOCAL_RANK, Slurm's SLURM_LOCALID, MPICH's MPI_LOCALRANKID)
// modulo the machine's GPUs, for every thread. Once, before any CUDA use.
void use_local_gpu();
// x (n floats in device memory) becomes Σ_r x_r on every rank, through NCCL
// (ncclAllReduce; the communicator opens on first use, rank 0's id sent over
// MPI). NCCL fixes its reduction order for a given rank count and topology,
// but it is not TreeSum's: for 2 ranks the same bits (a + b = b + a), for more
// equal to rounding. Bounded like every exchange: PeerLost when it does not
// complete within timeout() or a signal arrives.
void device_allreduce_sum(float* dev, int64_t n, const char* what);

// ---- counters -------------------------------------------------------------------------------------
// Payload bytes this rank handed to MPI to send, and messages, since the start;
// wall seconds spent inside the exchanges (waiting for slower ranks included).
uint64_t bytes_sent();
uint64_t messages_sent();
double exchange_seconds();

// ---- the fixed summation order ------------------------------------------------------------
// Σ of equal-length vectors (leaves, given in order) grouped as a binary
// counter: a new leaf is merged with the top of a stack while the two have
// the same height, the rest from the top down at the end. Leaves 0..7 give
// ((0+1)+(2+3))+((4+5)+(6+7)); 0..5 give ((0+1)+(2+3))+(4+5). A block of 2^k
// aligned leaves is always one subtree, so the sum over N ranks of their
// 2^k-leaf partial sums is the same tree as the sum over all N·2^k leaves:
// the data-parallel gradient is bitwise the same at any rank count that
// leaves each rank a power-of-two number of shards.
// TreeSumOf<V> is the same tree for any value type V given its addition
// into(earlier) += later (the trainer sums device tensors with it).
template <class V>
class TreeSumOf {
 public:
  using AddFn = std::function<void(V& earlier, const V& later)>;
  explicit TreeSumOf(AddFn add) : add_(std::move(add)) {}
  void add(V leaf) {
    ++leaves_;
    stack_.emplace_back(0, std::move(leaf));
    while (stack_.size() >= 2 && stack_[stack_.size() - 1].first == stack_[stack_.size() - 2].first) {
      auto b = std::move(stack_.back());
      stack_.pop_back();
      add_(stack_.back().second, b.second);  // (earlier + later)
      stack_.back().first += 1;
    }
  }
  // The sum (the leaves are consumed); V{} when no leaf was added.
  V take() {
    while (stack_.size() >= 2) {
      auto b = std::move(stack_.back());
      stack_.pop_back();
      add_(stack_.back().second, b.second);
      stack_.back().first = std::max(stack_.back().first, b.first) + 1;
    }
    V out = stack_.empty() ? V{} : std::move(stack_.back().second);
    stack_.clear();
    leaves_ = 0;
    return out;
  }
  int leaves() const { return leaves_; }

 private:
  AddFn add_;
  std::vector<std::pair<int, V>> stack_;  // (height, partial sum)
  int leaves_ = 0;
};
// Float vectors of equal length.
class TreeSum : public TreeSumOf<std::vector<float>> {
 public:
  TreeSum();
};

}  // namespace vm::dist
