// Autograd of the compiled ops, in C++ as torchvision's csrc/ops/autograd/ does: one
// torch::autograd::Function per op, registered for the Autograd dispatch key, so neither
// forward nor backward runs Python. Backward multiplies the gradient by keep * scale with
// dropout_backward, from the saved bits or from the saved (key, base); dropout_backward is
// linear in the gradient, so it is its own derivative (double backward).
//
// torch.func transforms refuse C++ autograd Functions; the Python API routes calls made
// inside a transform elsewhere (dropout_ext/_functorch.py). Calls that need no gradient
// skip the Function. What the forward keeps is the caller's `save` argument, whatever the
// grad mode (torch.compile replays the traced forward with grad off and its backward
// needs the saved output): the public API passes 0 when no gradient is needed.
//
// Each Function has one output, the differentiable one: the saved bits or (key, base)
// leave forward through a pointer argument, so the node keeps no metadata for a second
// output and sorts out no non-differentiable one (each costs host time per call).
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/strides.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/version.h>

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ops.h"

namespace DX_NS {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using DropoutSig = decltype(dropout_kernel);
using DropoutInplaceSig = decltype(dropout_inplace_kernel);
using DropoutAddSig = decltype(dropout_add_kernel);
using BiasDropoutAddSig = decltype(bias_dropout_add_kernel);
using BackwardSig = decltype(dropout_backward_kernel);

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

const c10::TypedOperatorHandle<DropoutSig>& dropout_op() {
  static const auto op = op_handle<DropoutSig>(DX_OP_NAME("dropout"));
  return op;
}
const c10::TypedOperatorHandle<DropoutInplaceSig>& dropout_inplace_op() {
  static const auto op = op_handle<DropoutInplaceSig>(DX_OP_NAME("dropout_"));
  return op;
}
const c10::TypedOperatorHandle<DropoutAddSig>& dropout_add_op() {
  static const auto op = op_handle<DropoutAddSig>(DX_OP_NAME("dropout_add"));
  return op;
}
const c10::TypedOperatorHandle<BiasDropoutAddSig>& bias_dropout_add_op() {
  static const auto op = op_handle<BiasDropoutAddSig>(DX_OP_NAME("bias_dropout_add"));
  return op;
}
const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = op_handle<BackwardSig>(DX_OP_NAME("dropout_backward"));
  return op;
}

bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

// What backward needs besides the saved tensor: the mask's description and the strides
// of the forward output (the gradient gets them, as torch.empty_like(input) would). The
// common case costs one saved_data entry (each is a string-keyed map insertion per call):
// "m" = the complex number p + (kind + 4 * lead)i, two exact doubles in one IValue (lead
// is far below 2**53). Lists only where needed: "s" = the output's strides when they are
// not row-major, "g" = global_shape then global_offset for a shard.
struct MaskInfo {
  double p = 0;
  int64_t kind = 0;
  int64_t lead = 0;
  OptInts global_shape, global_offset;

  void save(AutogradContext* ctx, const Tensor& out, const Tensor& saved) const {
    // A gradient that never arrives stays undefined (backward checks) instead of being
    // materialized as zeros (a kernel launch per backward on the GPU).
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({saved});
    ctx->saved_data["m"] = c10::complex<double>(p, static_cast<double>(kind + 4 * lead));
    if (out.strides() != at::IntArrayRef(c10::contiguous_strides(out.sizes()))) {
      ctx->saved_data["s"] = out.strides();
    }
    if (global_shape.has_value()) {
      std::vector<int64_t> g(global_shape->begin(), global_shape->end());
      g.insert(g.end(), global_offset->begin(), global_offset->end());
      ctx->saved_data["g"] = std::move(g);
    }
  }

  // grad * keep * scale, the gradient of every op's dropped input.
  static Tensor grad_input(AutogradContext* ctx, const Tensor& grad) {
    const Tensor saved = ctx->get_saved_variables()[0];
    const auto& data = ctx->saved_data;
    const c10::complex<double> pm = data.find("m")->second.toComplexDouble();
    const double p = pm.real();
    const int64_t m = static_cast<int64_t>(pm.imag());
    const int64_t nd = grad.dim();
    // The forward output's strides: saved when they were not row-major.
    const bool more = data.size() > 1;
    auto s = more ? data.find("s") : data.end();
    c10::DimVector strides;
    if (s != data.end()) {
      const std::vector<int64_t> v = s->second.toIntVector();
      strides.assign(v.begin(), v.end());
    } else {
      strides = c10::contiguous_strides(grad.sizes());
    }
    std::vector<int64_t> g;
    OptInts gs, go;
    auto gi = more ? data.find("g") : data.end();
    if (gi != data.end()) {
      g = gi->second.toIntVector();
      gs = at::IntArrayRef(g).slice(0, nd);
      go = at::IntArrayRef(g).slice(nd, nd);
    }
    // The usual backward records nothing, so it goes past the autograd kernel straight to
    // the device's (one dispatcher pass instead of two); create_graph goes through it, so
    // that the backward op records its own node.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    return backward_op().call(grad, saved, p, m & 3, m >> 2, gs, go, OptInts(at::IntArrayRef(strides)));
  }
};

// `save` when a gradient is needed: the mask must be kept.
int64_t save_mode(int64_t save) {
  TORCH_CHECK_VALUE(save == 1 || save == 2, "dropout_ext: save=", save,
                    " keeps no mask for backward, but an input requires grad (use 1 for bits, 2 for (key, base))");
  return save;
}


struct DropoutFn : public torch::autograd::Function<DropoutFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& rng,
                               const OptGenerator& gen, double p, int64_t kind, int64_t lead, int64_t save,
                               OptInts gs, OptInts go, Tensor* saved_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, saved] = dropout_op().call(input, rng, gen, p, kind, lead, save_mode(save), gs, go);
    MaskInfo{p, kind, lead, gs, go}.save(ctx, out, saved);
    *saved_out = std::move(saved);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor gi;
    if (grads[0].defined()) gi = MaskInfo::grad_input(ctx, grads[0]);
    return {gi, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct DropoutAddFn : public torch::autograd::Function<DropoutAddFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& residual,
                               const OptTensor& rng, const OptGenerator& gen, double p, int64_t save, OptInts gs,
                               OptInts go, Tensor* saved_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, saved] = dropout_add_op().call(input, residual, rng, gen, p, save_mode(save), gs, go);
    MaskInfo{p, 0, input.dim(), gs, go}.save(ctx, out, saved);
    *saved_out = std::move(saved);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& g = grads[0];
    Tensor gi, gr;
    if (g.defined()) {
      if (ctx->needs_input_grad(0)) gi = MaskInfo::grad_input(ctx, g);
      if (ctx->needs_input_grad(1)) gr = g;
    }
    return {gi, gr, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct BiasDropoutAddFn : public torch::autograd::Function<BiasDropoutAddFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& bias, const Tensor& residual,
                               const OptTensor& rng, const OptGenerator& gen, double p, int64_t save, OptInts gs,
                               OptInts go, Tensor* saved_out) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, saved] = bias_dropout_add_op().call(input, bias, residual, rng, gen, p, save_mode(save), gs, go);
    MaskInfo{p, 0, input.dim(), gs, go}.save(ctx, out, saved);
    *saved_out = std::move(saved);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Tensor& g = grads[0];
    Tensor gi, gb, gr;
    if (g.defined()) {
      if (ctx->needs_input_grad(0) || ctx->needs_input_grad(1)) {
        const Tensor gx = MaskInfo::grad_input(ctx, g);
        if (ctx->needs_input_grad(0)) gi = gx;
        if (ctx->needs_input_grad(1)) {
          // The bias broadcasts over every dim but the last: sum them out.
          std::vector<int64_t> dims(gx.dim() - 1);
          for (int64_t d = 0; d + 1 < gx.dim(); ++d) dims[d] = d;
          gb = dims.empty() ? gx : gx.sum(dims);
        }
      }
      if (ctx->needs_input_grad(2)) gr = g;
    }
    return {gi, gb, gr, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct BackwardFn : public torch::autograd::Function<BackwardFn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& grad, const Tensor& saved, double p, int64_t kind,
                               int64_t lead, OptInts gs, OptInts go, OptInts strides) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor out = backward_op().call(grad, saved, p, kind, lead, gs, go, strides);
    MaskInfo{p, kind, lead, gs, go}.save(ctx, out, saved);
    return {out};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    Tensor gg;
    if (grads[0].defined()) gg = MaskInfo::grad_input(ctx, grads[0]);
    return {gg, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace
}  // namespace DX_NS

// torch's CppNode<T>::apply hands name(), the demangled type name of the node, to
// CppNode_apply_functional on every backward call, for error messages only; demangling
// costs thousands of instructions per call (measured with callgrind: about 4,300, more
// than the rest of the node's backward). Each node type here has one name: these
// specializations compute it once and are otherwise torch's apply. Where torch's
// CppNode::apply has another form (before the functional form of torch 2.7), torch's own
// apply runs.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define DX_NAMED_ONCE(FN)                                                                              \
  template <>                                                                                          \
  variable_list CppNode<DX_NS::FN>::apply(variable_list&& inputs) {                                    \
    static const std::string kName = name();                                                           \
    std::lock_guard<std::mutex> lock(mutex_);                                                          \
    return CppNode_apply_functional<DX_NS::FN>(std::move(inputs), ctx_, is_variable_input_, output_info_, \
                                               kName);                                                 \
  }
namespace torch::autograd {
DX_NAMED_ONCE(DropoutFn)
DX_NAMED_ONCE(DropoutAddFn)
DX_NAMED_ONCE(BiasDropoutAddFn)
DX_NAMED_ONCE(BackwardFn)
}  // namespace torch::autograd
#undef DX_NAMED_ONCE
#endif

namespace DX_NS {
namespace {

std::tuple<Tensor, Tensor> dropout_autograd(const Tensor& input, const OptTensor& rng, const OptGenerator& gen,
                                            double p, int64_t kind, int64_t lead, int64_t save, OptInts gs,
                                            OptInts go) {
  if (!any_requires_grad({&input})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return dropout_op().call(input, rng, gen, p, kind, lead, save, gs, go);
  }
  Tensor saved;
  Tensor out = DropoutFn::apply(input, rng, gen, p, kind, lead, save, gs, go, &saved)[0];
  return {std::move(out), std::move(saved)};
}

void dropout_inplace_autograd(Tensor& input, const OptTensor& rng, const OptGenerator& gen, double p, int64_t kind,
                              int64_t lead, OptInts gs, OptInts go) {
  TORCH_CHECK(!any_requires_grad({&input}),
              "dropout_ext: dropout_ writes in place and has no gradient formula; call dropout (out of place) on "
              "a tensor that requires grad");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    dropout_inplace_op().call(input, rng, gen, p, kind, lead, gs, go);
  }
  // As torch's in-place ops do (ADInplaceOrView): autograd must see that the tensor
  // changed if another op saved it for backward.
  if (!input.is_inference()) torch::autograd::impl::bump_version(input);
}

std::tuple<Tensor, Tensor> dropout_add_autograd(const Tensor& input, const Tensor& residual, const OptTensor& rng,
                                                const OptGenerator& gen, double p, int64_t save, OptInts gs,
                                                OptInts go) {
  if (!any_requires_grad({&input, &residual})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return dropout_add_op().call(input, residual, rng, gen, p, save, gs, go);
  }
  Tensor saved;
  Tensor out = DropoutAddFn::apply(input, residual, rng, gen, p, save, gs, go, &saved)[0];
  return {std::move(out), std::move(saved)};
}

std::tuple<Tensor, Tensor> bias_dropout_add_autograd(const Tensor& input, const Tensor& bias, const Tensor& residual,
                                                     const OptTensor& rng, const OptGenerator& gen, double p,
                                                     int64_t save, OptInts gs, OptInts go) {
  if (!any_requires_grad({&input, &bias, &residual})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return bias_dropout_add_op().call(input, bias, residual, rng, gen, p, save, gs, go);
  }
  Tensor saved;
  Tensor out = BiasDropoutAddFn::apply(input, bias, residual, rng, gen, p, save, gs, go, &saved)[0];
  return {std::move(out), std::move(saved)};
}

Tensor dropout_backward_autograd(const Tensor& grad, const Tensor& saved, double p, int64_t kind, int64_t lead,
                                 OptInts gs, OptInts go, OptInts strides) {
  if (!any_requires_grad({&grad})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return backward_op().call(grad, saved, p, kind, lead, gs, go, strides);
  }
  return BackwardFn::apply(grad, saved, p, kind, lead, gs, go, strides)[0];
}

}  // namespace
}  // namespace DX_NS

TORCH_LIBRARY_IMPL(DX_NS, Autograd, m) {
  m.impl("dropout", &DX_NS::dropout_autograd);
  m.impl("dropout_", &DX_NS::dropout_inplace_autograd);
  m.impl("dropout_add", &DX_NS::dropout_add_autograd);
  m.impl("bias_dropout_add", &DX_NS::bias_dropout_add_autograd);
  m.impl("dropout_backward", &DX_NS::dropout_backward_autograd);
}
