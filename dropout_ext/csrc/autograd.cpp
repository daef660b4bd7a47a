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
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstring>
#include <optional>
#include <vector>

#include "ops.h"

namespace dropout_ext {
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
  static const auto op = op_handle<DropoutSig>("dropout_ext::dropout");
  return op;
}
const c10::TypedOperatorHandle<DropoutInplaceSig>& dropout_inplace_op() {
  static const auto op = op_handle<DropoutInplaceSig>("dropout_ext::dropout_");
  return op;
}
const c10::TypedOperatorHandle<DropoutAddSig>& dropout_add_op() {
  static const auto op = op_handle<DropoutAddSig>("dropout_ext::dropout_add");
  return op;
}
const c10::TypedOperatorHandle<BiasDropoutAddSig>& bias_dropout_add_op() {
  static const auto op = op_handle<BiasDropoutAddSig>("dropout_ext::bias_dropout_add");
  return op;
}
const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = op_handle<BackwardSig>("dropout_ext::dropout_backward");
  return op;
}

bool any_requires_grad(std::initializer_list<const Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const Tensor* t : ts)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

// What backward needs besides the saved tensor: the mask's description and the strides
// of the forward output (the gradient gets them, as torch.empty_like(input) would). Kept
// in one saved_data entry (each entry costs a string-keyed map insertion per call):
// "mask" = [bits of p, kind, lead, ndim, strides..., (global_shape..., global_offset...)].
struct MaskInfo {
  double p = 0;
  int64_t kind = 0;
  int64_t lead = 0;
  OptInts global_shape, global_offset;

  static constexpr int64_t kHead = 4;  // p, kind, lead, ndim

  void save(AutogradContext* ctx, const Tensor& out, const Tensor& saved) const {
    // A gradient that never arrives stays undefined (backward checks) instead of being
    // materialized as zeros (a kernel launch per backward on the GPU).
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({saved});
    const int64_t nd = out.dim();
    std::vector<int64_t> mask;
    mask.reserve(kHead + 3 * nd);
    int64_t p_bits;
    static_assert(sizeof(p_bits) == sizeof(p), "p travels as the bits of a double");
    std::memcpy(&p_bits, &p, sizeof(p));
    mask.push_back(p_bits);
    mask.push_back(kind);
    mask.push_back(lead);
    mask.push_back(nd);
    mask.insert(mask.end(), out.strides().begin(), out.strides().end());
    if (global_shape.has_value()) {
      mask.insert(mask.end(), global_shape->begin(), global_shape->end());
      mask.insert(mask.end(), global_offset->begin(), global_offset->end());
    }
    ctx->saved_data["mask"] = std::move(mask);
  }

  // grad * keep * scale, the gradient of every op's dropped input.
  static Tensor grad_input(AutogradContext* ctx, const Tensor& grad) {
    const Tensor saved = ctx->get_saved_variables()[0];
    const std::vector<int64_t> mask = ctx->saved_data.find("mask")->second.toIntVector();
    double p;
    std::memcpy(&p, &mask[0], sizeof(p));
    const int64_t nd = mask[3];
    const at::IntArrayRef all(mask);
    const at::IntArrayRef strides = all.slice(kHead, nd);
    OptInts gs, go;
    if (static_cast<int64_t>(mask.size()) > kHead + nd) {
      gs = all.slice(kHead + nd, nd);
      go = all.slice(kHead + 2 * nd, nd);
    }
    // The usual backward records nothing, so it goes past the autograd kernel straight to
    // the device's (one dispatcher pass instead of two); create_graph goes through it, so
    // that the backward op records its own node.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    return backward_op().call(grad, saved, p, mask[1], mask[2], gs, go, OptInts(strides));
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
}  // namespace dropout_ext

TORCH_LIBRARY_IMPL(dropout_ext, Autograd, m) {
  m.impl("dropout", &dropout_ext::dropout_autograd);
  m.impl("dropout_", &dropout_ext::dropout_inplace_autograd);
  m.impl("dropout_add", &dropout_ext::dropout_add_autograd);
  m.impl("bias_dropout_add", &dropout_ext::bias_dropout_add_autograd);
  m.impl("dropout_backward", &dropout_ext::dropout_backward_autograd);
}
