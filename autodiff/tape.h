// autodiff/tape.h — reverse-mode automatic differentiation in micrograd's
// shape: every op returns a Var whose node remembers its parents and a
// backward closure; backward() walks the graph in reverse topological order
// and each closure adds (+=) its contribution into its parents' .grad, then
// frees what the node no longer needs (its gradient, closure and parent
// links): after backward an op's result has no .grad (leaves keep theirs),
// and a graph is backpropagated once.
//
// The graph *is* the tape: it is built as ops run and freed when the last Var
// referring to it goes away. Under a NoGradGuard ops record nothing.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace vm {

template <class T>
struct Node {
  TensorT<T> value;  // forward result
  TensorT<T> grad;   // d(loss)/d(value), allocated lazily (same shape as value)
  bool requires_grad = false;
  std::vector<std::shared_ptr<Node>> parents;
  std::function<void(Node&)> backward;  // reads self.grad, accumulates into parents
  const char* op = "leaf";
  std::string name;  // parameters carry their name (for errors and freezing)
  bool released = false;  // an op's node after backward passed its gradient on (autodiff/tape.cpp)

  // grad += g, allocating it (zeroed, on the value's device) on first use.
  TensorT<T>& grad_buffer() {
    if (!grad.defined()) grad = TensorT<T>(value.shape(), value.device());
    return grad;
  }
};

template <class T>
class VarT {
 public:
  VarT() = default;
  explicit VarT(TensorT<T> value, bool requires_grad = false, std::string name = "") {
    node_ = std::make_shared<Node<T>>();
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
    node_->name = std::move(name);
  }
  explicit VarT(std::shared_ptr<Node<T>> n) : node_(std::move(n)) {}

  bool defined() const { return (bool)node_; }
  const TensorT<T>& value() const { return node_->value; }
  TensorT<T>& value() { return node_->value; }
  const TensorT<T>& grad() const { return node_->grad; }
  TensorT<T>& grad() { return node_->grad; }
  const Shape& shape() const { return node_->value.shape(); }
  int ndim() const { return node_->value.ndim(); }
  int64_t size(int d) const { return node_->value.size(d); }
  int64_t numel() const { return node_->value.numel(); }
  bool requires_grad() const { return node_->requires_grad; }
  void set_requires_grad(bool r) { node_->requires_grad = r; }  // freeze / unfreeze
  const std::string& name() const { return node_->name; }
  T item() const { return node_->value.item(); }
  void zero_grad() { node_->grad = TensorT<T>(); }
  Node<T>* node() const { return node_.get(); }
  const std::shared_ptr<Node<T>>& ptr() const { return node_; }

 private:
  std::shared_ptr<Node<T>> node_;
};

using Var = VarT<float>;
using VarD = VarT<double>;

// ---- recording ---------------------------------------------------------------
bool grad_enabled();
struct NoGradGuard {  // ops inside this scope record no graph
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Make the result of an op. When grad is enabled and some parent requires
// grad, the node keeps its parents and the backward closure; otherwise it is a
// constant leaf and the closure is dropped.
template <class T>
VarT<T> make_result(TensorT<T> value, const char* op, std::vector<VarT<T>> parents,
                    std::function<void(Node<T>&)> backward) {
  VarT<T> out(std::move(value));
  out.node()->op = op;
  if (!grad_enabled()) return out;
  bool any = false;
  for (auto& p : parents) any = any || p.requires_grad();
  if (!any) return out;
  out.node()->requires_grad = true;
  for (auto& p : parents) out.node()->parents.push_back(p.ptr());
  out.node()->backward = std::move(backward);
  return out;
}

// Reverse-mode sweep from a scalar (seed 1) or from a given output gradient.
template <class T>
void backward(const VarT<T>& root);
template <class T>
void backward(const VarT<T>& root, const TensorT<T>& seed_grad);

}  // namespace vm
