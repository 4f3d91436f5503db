// kernels/table.h — how a kernel is declared once for both devices.
//
// Every kernel an op calls has one signature for the CPU (namespace
// vm::kernels, kernels/cpu/*.cpp) and the GPU (vm::kernels::cuda,
// kernels/cuda/*.cu). A family's header (kernels/elementwise.h, layout.h,
// nn.h, rowwise.h, gemm.h, moe.h) lists its kernels once, as an X-macro of
// entries K(return type, name, (parameters in T)), each after a /* comment */
// that says what it computes, and declares them in both
// namespaces with VM_DECLARE_KERNELS; each device's source file defines them
// and ends with VM_INSTANTIATE_KERNELS (float and double). A kernel missing
// on one device therefore fails to compile there, and the ops
// (autodiff/ops_*.cpp) reach either twin with the same arguments through
// VM_RUN (autodiff/ops_common.h).
//
// Extras that exist on one device only (launch variants for the dev harness,
// the dispatch plan, ...) stay in kernels/cpu/*.h or kernels/cuda/*.h.
#pragma once
#include <cstdint>
#include <vector>

#define VM_KERNEL_DECLARE(ret, name, params) template <class T> ret name params;
// The signature as an alias template, then the two explicit instantiations:
// names the exact overload even where a device adds others of that name.
#define VM_KERNEL_INSTANTIATE(ret, name, params)           \
  template <class T>                                       \
  using vm_kernel_signature_##name = ret params;           \
  template vm_kernel_signature_##name<float> name<float>;  \
  template vm_kernel_signature_##name<double> name<double>;

// The table in both namespaces (use at global scope, in the family header).
#define VM_DECLARE_KERNELS(TABLE)                                  \
  namespace vm::kernels {                                          \
  TABLE(VM_KERNEL_DECLARE)                                         \
  }                                                                \
  namespace vm::kernels::cuda {                                    \
  TABLE(VM_KERNEL_DECLARE)                                         \
  }
// float and double instances of the table (inside the device's namespace,
// after the definitions).
#define VM_INSTANTIATE_KERNELS(TABLE) TABLE(VM_KERNEL_INSTANTIATE)
