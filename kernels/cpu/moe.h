// kernels/cpu/moe.h — the CPU side of kernels/moe.h (the table) plus the
// top-K selection the ops share (ops::topk's indices, topk_gates).
#pragma once
#include <cstdint>

#include "kernels/moe.h"

namespace vm::kernels {

// idx (N, k) = the k largest entries of each row of x (N, E), ties to the
// lower index, NaN ranked as −inf (kernels/moe.h, topk_key; partial sort per
// row; rows split across the OpenMP pool).
template <class T>
void topk_select(const T* x, int64_t N, int64_t E, int k, int32_t* idx);

}  // namespace vm::kernels
