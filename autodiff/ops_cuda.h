// autodiff/ops_cuda.h — the GPU half of every op in autodiff/ops.h (internal:
// the op files call these, users call vm::ops). Same signatures; inputs are
// device tensors (checked by detail::on_cuda before the call); the CPU op has
// already validated shapes, ids and ranges. Each forward launches the CUDA
// twin of the CPU kernel (kernels/cuda) and records a backward closure that
// launches its backward twin, so a graph built on device tensors runs end to
// end on the GPU and the tape (autodiff/tape.h) is the same for both devices.
//
// Host round-trips (each synchronises the stream), by design:
//   * integer arguments (ids, targets, row lists, indices) are uploaded;
//   * cross_entropy returns its loss on the host (as the CPU kernel does) and
//     its backward reads the scalar output gradient;
//   * topk computes its indices on the host (ops::TopK returns host indices,
//     which the MoE dispatch plan consumes); the values are gathered on the GPU.
#pragma once
#include "autodiff/ops.h"
#include "kernels/cuda/elementwise.h"  // Unary (plain C++ header)

#ifdef VMOER_HAVE_CUDA
namespace vm::ops::cuda_ops {

template <class T> VarT<T> matmul(const VarT<T>& a, const VarT<T>& b);
// add / sub / mul / div with numpy broadcasting (name: the op's, for errors)
template <class T> VarT<T> binary(const VarT<T>& a, const VarT<T>& b, kernels::cuda::Binary op, const char* name);
// Every unary and scalar op (exp ... tanh, add/mul/pow_scalar; alpha = the scalar).
template <class T> VarT<T> unary(const VarT<T>& a, kernels::cuda::Unary op, double alpha, const char* name);
template <class T> VarT<T> sum(const VarT<T>& a, int axis, bool keepdim);
template <class T> VarT<T> sum_all(const VarT<T>& a);
template <class T> VarT<T> softmax(const VarT<T>& a);
template <class T> VarT<T> log_softmax(const VarT<T>& a);
template <class T> VarT<T> logsumexp(const VarT<T>& a);
template <class T> VarT<T> layernorm(const VarT<T>& x, const VarT<T>& gamma, const VarT<T>& beta, double eps);
template <class T> VarT<T> rmsnorm(const VarT<T>& x, const VarT<T>& gamma, double eps);
template <class T> VarT<T> embedding(const VarT<T>& table, const std::vector<int32_t>& ids, Shape out_shape);
template <class T> VarT<T> transpose(const VarT<T>& a, int d0, int d1);
template <class T> VarT<T> slice(const VarT<T>& a, int axis, int64_t start, int64_t stop);
template <class T> VarT<T> concat(const std::vector<VarT<T>>& xs, int axis);
template <class T> VarT<T> attention(const VarT<T>& q, const VarT<T>& k, const VarT<T>& v, bool causal);
template <class T> VarT<T> cross_entropy(const VarT<T>& logits, const std::vector<int32_t>& targets,
                                         int32_t ignore_index);
template <class T> VarT<T> dropout(const VarT<T>& a, double p, uint64_t seed, uint64_t stream, uint64_t offset);
template <class T> TopK<T> topk(const VarT<T>& x, int k);
template <class T> VarT<T> take_cols(const VarT<T>& x, const std::vector<int32_t>& idx, int k);
template <class T> VarT<T> gather_rows(const VarT<T>& x, const std::vector<int32_t>& rows);
template <class T> VarT<T> scatter_add_rows(const VarT<T>& src, const std::vector<int32_t>& rows, int64_t n_rows);
template <class T> VarT<T> grouped_matmul(const VarT<T>& x, const VarT<T>& w, const std::vector<int64_t>& offsets);
template <class T> VarT<T> fill_tril_expdiag(const VarT<T>& v, int E);
template <class T> VarT<T> tril_matvec(const VarT<T>& L, const VarT<T>& eps);
template <class T> VarT<T> sum_log_diag(const VarT<T>& L);

// y += x for device tensors of equal size (the tape's gradient accumulation).
template <class T> void accumulate(TensorT<T>& y, const TensorT<T>& x);

}  // namespace vm::ops::cuda_ops
#endif
