#include "autodiff/tape.h"

#include "autodiff/accumulate.h"  // x += y on either device: all the tape computes

#include <unordered_set>

namespace vm {

namespace {
thread_local bool g_grad_enabled = true;
}

bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

template <class T>
void backward(const VarT<T>& root, const TensorT<T>& seed_grad) {
  VM_CHECK(root.defined(), "backward: undefined variable");
  VM_CHECK(seed_grad.shape() == root.shape(),
           "backward: seed gradient " + shape_str(seed_grad.shape()) + " for output " +
               shape_str(root.shape()));
  if (!root.requires_grad()) return;
  // Topological order by iterative depth-first search (graphs can be deep).
  // `order` owns its nodes: the sweep below lets go of each one once done.
  std::vector<std::shared_ptr<Node<T>>> order;
  std::unordered_set<Node<T>*> seen;
  std::vector<std::pair<std::shared_ptr<Node<T>>, size_t>> stack{{root.ptr(), 0}};
  seen.insert(root.node());
  while (!stack.empty()) {
    auto& [n, i] = stack.back();
    VM_CHECK(!n->released, std::string("backward: the graph through '") + n->op +
                               "' was already used by an earlier backward, which freed it; run the forward again");
    if (i < n->parents.size()) {
      const std::shared_ptr<Node<T>>& p = n->parents[i++];
      if (p->requires_grad && !seen.count(p.get())) {
        seen.insert(p.get());
        stack.push_back({p, 0});
      }
    } else {
      order.push_back(std::move(n));
      stack.pop_back();
    }
  }
  TensorT<T>& g = root.node()->grad_buffer();
  ops::detail::accumulate(g, seed_grad.to(g.device()));  // the seed may come from the host
  // Reverse topological order: every consumer of n has run before n, so once
  // n has passed its gradient on, nothing needs n's gradient, closure or
  // parent links again. Releasing them as we go (as PyTorch does without
  // retain_graph) frees each activation's gradient, and each activation no
  // Var outside holds, during the sweep instead of after it: the step's peak
  // memory is the forward's saved tensors plus a moving front of gradients.
  // Leaves (parameters, inputs) keep their gradient; a released node refuses
  // a second backward (above).
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node<T>* n = it->get();
    if (n->backward && n->grad.defined()) n->backward(*n);
    if (n->backward) {
      n->backward = nullptr;
      n->parents.clear();
      n->grad = TensorT<T>();
      n->released = true;
    }
    it->reset();
  }
}

template <class T>
void backward(const VarT<T>& root) {
  VM_CHECK(root.defined(), "backward: undefined variable");
  VM_CHECK(root.numel() == 1, "backward: output of shape " + shape_str(root.shape()) +
                                  " is not a scalar; pass a seed gradient");
  backward(root, TensorT<T>::full(root.shape(), T(1)));
}

template void backward(const VarT<float>&);
template void backward(const VarT<double>&);
template void backward(const VarT<float>&, const TensorT<float>&);
template void backward(const VarT<double>&, const TensorT<double>&);

}  // namespace vm
