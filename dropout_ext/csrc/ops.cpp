// The ops' device-generic glue: argument checks, the empty_like output, (key, base), the
// layout description (index.h), then one launcher call per pass (launch.h). The same
// kernel functions serve the CPU and CUDA dispatch keys; they are the one place the
// compiled kernels validate their arguments. The schemas are defined in Python
// (dropout_ext/_ops.py, SCHEMAS); autograd is in autograd.cpp, fake kernels in _ops.py.
//
// Compiled into the product (namespace dropout_ext) and, with the emulator's and the
// tunable CUDA launcher's launch.h functions, into the testing module
// (dropout_ext_testing, testing/ops.cpp): see ns.h.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>
#ifdef DROPOUT_EXT_WITH_CUDA
#include <ATen/cuda/EmptyTensor.h>
#endif

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "index.h"
#include "launch.h"
#include "ops.h"

namespace DX_NS {
namespace {

using at::Tensor;

// torch's Python name of a dtype, for messages that match the Python API's.
std::string dtype_name(at::ScalarType s) {
  switch (s) {
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kShort: return "torch.int16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kBool: return "torch.bool";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(s);
  }
}

void check_floating(const Tensor& t, const char* what) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble,
                   "dropout_ext: ", what, " must be a floating point tensor (float16, bfloat16, float32 or float64), got ",
                   dtype_name(s));
}

DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kDouble: return DType::Float64;
    default: return DType::Float32;
  }
}

void check_p(double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
}

Kind check_kind(int64_t kind) {
  TORCH_CHECK_VALUE(kind >= 0 && kind <= 2, "dropout_ext: kind must be 0 (inverted), 1 (vanilla) or 2 (alpha), got ",
                    kind);
  return static_cast<Kind>(kind);
}

void check_lead(const Tensor& input, int64_t lead) {
  TORCH_CHECK_VALUE(lead >= 0 && lead <= input.dim(), "dropout_ext: lead must be in [0, ", input.dim(), "], got ",
                    lead);
}

void check_global(const Tensor& input, const OptInts& shape, const OptInts& offset) {
  TORCH_CHECK_VALUE(shape.has_value() == offset.has_value(),
                    "dropout_ext: global_shape and global_offset must be given together");
  if (!shape) return;
  const int64_t nd = input.dim();
  TORCH_CHECK_VALUE(static_cast<int64_t>(shape->size()) == nd && static_cast<int64_t>(offset->size()) == nd,
                    "dropout_ext: global_shape and global_offset need one entry per input dim (", nd, "), got ",
                    *shape, " and ", *offset);
  for (int64_t d = 0; d < nd; ++d) {
    TORCH_CHECK_VALUE((*offset)[d] >= 0 && (*offset)[d] + input.size(d) <= (*shape)[d],
                      "dropout_ext: the input (shape ", input.sizes(), ") at global_offset ", *offset,
                      " does not fit in global_shape ", *shape);
  }
}

void check_rng(const Tensor& rng, const Tensor& input) {
  TORCH_CHECK(rng.scalar_type() == at::kLong && rng.numel() == 2,
              "dropout_ext: rng must be an int64 tensor of two elements (key, base), got ", dtype_name(rng.scalar_type()),
              " with ", rng.numel(), " elements");
  TORCH_CHECK(rng.device().is_cpu() || rng.device() == input.device(),
              "dropout_ext: rng must be on the CPU or on the input's device ", input.device(), ", got ", rng.device());
}

void check_generator(const std::optional<at::Generator>& gen, const Tensor& input) {
  if (!gen.has_value() || !gen->defined()) return;
  const at::Device gd = gen->device();
  const at::Device d = input.device();
  bool same = gd.type() == d.type();
  if (same && d.is_cuda()) same = (gd.has_index() ? gd.index() : 0) == (d.has_index() ? d.index() : 0);
  TORCH_CHECK_VALUE(same, "dropout_ext: generator is on ", gd, " but the input is on ", d);
}

void check_like(const Tensor& input, const Tensor& t, const char* name) {
  check_floating(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), "dropout_ext: ", name, " must have the input's dtype ",
                   dtype_name(input.scalar_type()), ", got ", dtype_name(t.scalar_type()));
  TORCH_CHECK(t.device() == input.device(), "dropout_ext: ", name, " must be on the input's device ", input.device(),
              ", got ", t.device());
}

void check_residual(const Tensor& input, const Tensor& residual) {
  check_like(input, residual, "residual");
  TORCH_CHECK(residual.sizes() == input.sizes(), "dropout_ext: residual must have the input's shape ", input.sizes(),
              ", got ", residual.sizes());
}

void check_bias(const Tensor& input, const Tensor& bias) {
  check_like(input, bias, "bias");
  TORCH_CHECK(input.dim() >= 1 && bias.dim() == 1 && bias.size(0) == input.size(-1),
              "dropout_ext: bias must be 1-D with the input's last dimension (",
              input.dim() >= 1 ? std::to_string(input.size(-1)) : std::string("none"), "), got shape ", bias.sizes());
}

// Outputs straight from the device's allocator, as torch's own kernels make theirs
// (at::detail::empty_strided_cpu / _cuda): no dispatcher pass per allocation, which is
// host time on every call. Every element of these outputs is written by the pass, so
// the NaN fill of uninitialized memory under torch.use_deterministic_algorithms has
// nothing to show. Other devices go through the dispatcher.
Tensor empty_strided_on(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType dtype, at::Device device) {
#ifdef DROPOUT_EXT_WITH_CUDA
  if (device.is_cuda()) return Tensor(at::detail::empty_strided_cuda(sizes, strides, dtype, device));
#endif
  if (device.is_cpu()) return Tensor(at::detail::empty_strided_cpu(sizes, strides, dtype));
  return at::empty_strided(sizes, strides, at::TensorOptions().dtype(dtype).device(device));
}

Tensor empty_1d(int64_t n, at::ScalarType dtype, at::Device device) {
  return empty_strided_on({n}, {1}, dtype, device);
}

// at::empty_like(t): t's strides when it is dense (the common case, here without the
// dispatcher), else what empty_like infers.
Tensor empty_like_dense(const Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return at::empty_like(t);
  return empty_strided_on(t.sizes(), t.strides(), t.scalar_type(), t.device());
}

// Mask words of the local tensor: its leading `lead` dims.
int64_t mask_words(const Tensor& input, int64_t lead) {
  int64_t n = 1;
  for (int64_t d = 0; d < lead; ++d) n *= input.size(d);
  return n;
}

// The saved output: packed bits (save 1), the (key, base) pair (save 2), or nothing.
enum Save : int64_t { kSaveNone = 0, kSaveBits = 1, kSaveRng = 2 };

int64_t check_save(int64_t save) {
  TORCH_CHECK_VALUE(save >= 0 && save <= 2, "dropout_ext: save must be 0 (nothing), 1 (bits) or 2 (rng), got ", save);
  return save;
}

// Everything one call of a forward op describes.
struct Call {
  Op op = Op::Dropout;
  const Tensor* input = nullptr;
  const Tensor* residual = nullptr;
  const Tensor* bias = nullptr;
  const std::optional<Tensor>* rng = nullptr;
  const std::optional<at::Generator>* gen = nullptr;
  double p = 0.5;
  Kind kind = Kind::Inverted;
  int64_t lead = 0;
  int64_t save = 0;
  OptInts global_shape, global_offset;
  mutable Tensor rng_hold;  // a contiguous copy of a device rng tensor, kept for the launches
};

// Fills a's mask parameters and (key, base): from the rng tensor (by value from the CPU,
// by pointer on the GPU) or drawn from the device's generator. `saved_rng` (save 2)
// receives the pair.
void set_rng(PassArgs& a, const Call& c, Tensor* saved_rng) {
  const Tensor& input = *c.input;
  a.mask = make_mask_params(0, 0, c.p, c.kind);
  const std::optional<Tensor>& rng = *c.rng;
  if (rng.has_value() && rng->defined()) {
    check_rng(*rng, input);
    if (rng->device().is_cpu()) {
      const Tensor r = rng->contiguous();
      a.mask.key = static_cast<uint64_t>(r.data_ptr<int64_t>()[0]);
      a.mask.base = static_cast<uint64_t>(r.data_ptr<int64_t>()[1]);
    } else {
      // read by the kernels when they run: the tensor must outlive the call's launches
      c.rng_hold = rng->contiguous();
      a.rng.key_ptr = c.rng_hold.data_ptr<int64_t>();
      a.rng.base_ptr = a.rng.key_ptr + 1;
    }
    if (saved_rng) *saved_rng = rng->clone();
    return;
  }
  if (input.is_cuda()) {
#ifdef DROPOUT_EXT_WITH_CUDA
    cuda_draw_rng(*c.gen, input.device(), a);
    if (saved_rng) {
      *saved_rng = empty_1d(2, at::kLong, input.device());
      a.rng_out = saved_rng->data_ptr<int64_t>();
    }
    return;
#endif
  }
  TORCH_CHECK(input.device().is_cpu(), "dropout_ext: no kernel for device ", input.device());
  cpu_draw_rng(*c.gen, a.mask);
  if (saved_rng) {
    *saved_rng = empty_1d(2, at::kLong, input.device());
    saved_rng->data_ptr<int64_t>()[0] = static_cast<int64_t>(a.mask.key);
    saved_rng->data_ptr<int64_t>()[1] = static_cast<int64_t>(a.mask.base);
  }
}

bool try_channel_pass(PassArgs& a, const at::Device& device) {
  if (a.g.numel == 0) return false;
  if (device.is_cpu()) return cpu_try_channel_pass(a);
#ifdef DROPOUT_EXT_WITH_CUDA
  if (device.is_cuda()) return cuda_try_channel_pass(a);
#endif
  return false;
}

void run_pass(PassArgs& a, const at::Device& device) {
  if (a.g.numel == 0 && !a.rng_out) return;
  if (device.is_cpu()) return cpu_run_pass(a);
#ifdef DROPOUT_EXT_WITH_CUDA
  if (device.is_cuda()) return cuda_run_pass(a);
#endif
  TORCH_CHECK(false, "dropout_ext: no kernel for device ", device);
}

std::vector<int64_t> bias_strides(const Tensor& input, const Tensor& bias) {
  std::vector<int64_t> s(input.dim(), 0);
  if (input.dim() > 0) s.back() = bias.stride(0);
  return s;
}

// One data pass over `out` (and the operands of c), the mask from Philox (element-wise)
// or from bits_in. False when the layout has too many dims to describe (index.h).
bool describe(PassArgs& a, const Call& c, const Tensor& out, const Tensor& x, const Tensor* residual,
              const Tensor* bias) {
  std::vector<int64_t> bstr;
  GeometryRequest r;
  r.ndim = static_cast<int>(x.dim());
  r.size = x.sizes().data();
  r.stride[kOut] = out.strides().data();
  r.stride[kX] = x.strides().data();
  if (residual) r.stride[kRes] = residual->strides().data();
  if (bias) {
    bstr = bias_strides(x, *bias);
    r.stride[kBias] = bstr.data();
  }
  r.lead = static_cast<int>(c.lead);
  if (c.global_shape) {
    r.global_size = c.global_shape->data();
    r.global_offset = c.global_offset->data();
  }
  if (x.dim() > 64 || !make_geometry(r, a.g)) return false;
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  a.residual = residual ? residual->data_ptr() : nullptr;
  a.bias = bias ? bias->data_ptr() : nullptr;
  return true;
}

// The reduced mask pass of channel-wise dropout and drop_path: the keep bits of the
// leading `lead` dims (global words when the input is a shard) into `bits`.
void run_mask_pass(const PassArgs& data, const Call& c, uint8_t* bits, int64_t words) {
  PassArgs m = data;
  m.op = Op::MaskOnly;
  m.x = m.out = nullptr;
  m.residual = m.bias = nullptr;
  m.bits_in = nullptr;
  m.bits_out = bits;
  m.nbits = words;
  GeometryRequest r;
  const Tensor& input = *c.input;
  r.ndim = static_cast<int>(c.lead);
  r.size = input.sizes().data();
  r.lead = static_cast<int>(c.lead);
  if (c.global_shape) {
    r.global_size = c.global_shape->data();
    r.global_offset = c.global_offset->data();
  }
  TORCH_CHECK(make_geometry(r, m.g), "dropout_ext: mask shape has too many dims");
  run_pass(m, input.device());
}

// A packed bit mask of `words` bits: (words + 7) / 8 bytes. On CUDA its allocation is
// rounded up to whole 32-bit words (the sizes are then set back, no view), because the
// tile kernel ORs bits in with 32-bit atomics on the aligned word that holds a byte
// (cuda/kernel_common.cuh, or_bits).
// `zeroed`: the whole allocation is zeroed first (the kernels that OR their bits in).
Tensor bit_buffer(int64_t words, const at::Device& device, bool zeroed = false) {
  const int64_t bytes = (words + 7) / 8;
  if (!device.is_cuda()) {
    Tensor t = empty_1d(bytes, at::kByte, device);
    if (zeroed) t.zero_();
    return t;
  }
  Tensor t = empty_1d((bytes + 3) / 4 * 4, at::kByte, device);
  if (zeroed) t.zero_();
  t.unsafeGetTensorImpl()->set_sizes_contiguous({bytes});
  return t;
}

// A data pass (with the reduced mask pass first when the mask is channel-wise and drawn
// from Philox). `bits_out`: where the keep bits go (may be null), `bits_in`: read instead.
void run_data(PassArgs a, const Call& c, const Tensor& out, uint8_t* bits_out, const uint8_t* bits_in) {
  const Tensor& input = *c.input;
  const int64_t words = mask_words(input, c.lead);
  Tensor scratch;
  a.op = c.op;
  a.nbits = words;
  bool described = false;  // a.g and the data pointers describe this pass
  if (!bits_in && c.lead < input.dim()) {
    // Channel-wise: in one pass where the backend can (CUDA, contiguous input) ...
    described = describe(a, c, out, input, c.residual, c.bias);
    if (described) {
      PassArgs one = a;  // the backend may plan one's loops; a keeps the description
      one.bits_out = bits_out;
      if (try_channel_pass(one, input.device())) return;
    }
    // ... else draw the (small) mask of words first, then stream the data from it.
    uint8_t* bits = bits_out;
    if (!bits) {
      scratch = bit_buffer(words, input.device());
      bits = scratch.data_ptr<uint8_t>();
    }
    run_mask_pass(a, c, bits, words);
    a.rng_out = nullptr;
    bits_in = bits;
    bits_out = nullptr;
  }
  a.bits_in = bits_in;
  a.bits_out = bits_out;
  if (described || describe(a, c, out, input, c.residual, c.bias)) {
    run_pass(a, input.device());
    return;
  }
  // More than kMaxDims dims that cannot be merged: run on row-major copies.
  const Tensor x = input.contiguous();
  const Tensor r = c.residual ? c.residual->contiguous() : Tensor();
  const Tensor b = c.bias ? c.bias->contiguous() : Tensor();
  const Tensor tmp = at::empty(input.sizes(), input.options());  // rare: more dims than kMaxDims
  TORCH_CHECK(describe(a, c, tmp, x, c.residual ? &r : nullptr, c.bias ? &b : nullptr),
              "dropout_ext: cannot describe a row-major tensor");
  run_pass(a, input.device());
  const_cast<Tensor&>(out).copy_(tmp);
}

std::tuple<Tensor, Tensor> forward(const Call& c, const Tensor* inplace) {
  const Tensor& input = *c.input;
  check_floating(input, "input");
  check_p(c.p);
  check_lead(input, c.lead);
  check_save(c.save);
  check_global(input, c.global_shape, c.global_offset);
  check_generator(*c.gen, input);
  if (c.residual) check_residual(input, *c.residual);
  if (c.bias) check_bias(input, *c.bias);
  c10::OptionalDeviceGuard guard(input.device());
  const Tensor out = inplace ? *inplace : empty_like_dense(input);
  const int64_t words = mask_words(input, c.lead);
  Tensor saved;
  PassArgs a;
  a.dtype = dtype_of(input);
  set_rng(a, c, c.save == kSaveRng ? &saved : nullptr);
  uint8_t* bits_out = nullptr;
  if (c.save == kSaveBits) {
    saved = bit_buffer(words, input.device());
    bits_out = saved.data_ptr<uint8_t>();
  } else if (c.save == kSaveNone) {
    saved = empty_1d(0, at::kByte, input.device());
  }
  run_data(a, c, out, bits_out, nullptr);
  return {out, saved};
}

Call make_call(Op op, const Tensor& input, const OptTensor& rng, const OptGenerator& gen,
               double p, int64_t kind, int64_t lead, int64_t save, OptInts gs, OptInts go) {
  Call c;
  c.op = op;
  c.input = &input;
  c.rng = &rng;
  c.gen = &gen;
  c.p = p;
  c.kind = check_kind(kind);
  c.lead = lead;
  c.save = save;
  c.global_shape = gs;
  c.global_offset = go;
  return c;
}

}  // namespace

std::tuple<Tensor, Tensor> dropout_kernel(const Tensor& input, const std::optional<Tensor>& rng,
                                          const std::optional<at::Generator>& gen, double p, int64_t kind,
                                          int64_t lead, int64_t save, OptInts gs, OptInts go) {
  const Call c = make_call(Op::Dropout, input, rng, gen, p, kind, lead, save, gs, go);
  Call cc = c;
  if (c.kind == Kind::Alpha) cc.op = Op::Alpha;
  return forward(cc, nullptr);
}

void dropout_inplace_kernel(Tensor& input, const std::optional<Tensor>& rng, const std::optional<at::Generator>& gen,
                            double p, int64_t kind, int64_t lead, OptInts gs, OptInts go) {
  Call c = make_call(Op::Dropout, input, rng, gen, p, kind, lead, 0, gs, go);
  if (c.kind == Kind::Alpha) c.op = Op::Alpha;
  forward(c, &input);
}

std::tuple<Tensor, Tensor> dropout_add_kernel(const Tensor& input, const Tensor& residual,
                                              const std::optional<Tensor>& rng,
                                              const std::optional<at::Generator>& gen, double p, int64_t save,
                                              OptInts gs, OptInts go) {
  Call c = make_call(Op::DropoutAdd, input, rng, gen, p, 0, input.dim(), save, gs, go);
  c.residual = &residual;
  return forward(c, nullptr);
}

std::tuple<Tensor, Tensor> bias_dropout_add_kernel(const Tensor& input, const Tensor& bias, const Tensor& residual,
                                                   const std::optional<Tensor>& rng,
                                                   const std::optional<at::Generator>& gen, double p, int64_t save,
                                                   OptInts gs, OptInts go) {
  Call c = make_call(Op::BiasDropoutAdd, input, rng, gen, p, 0, input.dim(), save, gs, go);
  c.residual = &residual;
  c.bias = &bias;
  return forward(c, nullptr);
}

Tensor dropout_backward_kernel(const Tensor& grad, const Tensor& saved, double p, int64_t kind, int64_t lead,
                               OptInts gs, OptInts go, OptInts strides) {
  check_floating(grad, "grad");
  check_p(p);
  check_lead(grad, lead);
  check_global(grad, gs, go);
  const std::optional<at::Generator> no_gen;
  std::optional<Tensor> rng;
  const bool from_bits = saved.scalar_type() == at::kByte;
  const int64_t words = mask_words(grad, lead);
  if (from_bits) {
    TORCH_CHECK(saved.numel() == (words + 7) / 8, "dropout_ext: saved bits must hold ", (words + 7) / 8,
                " bytes, got ", saved.numel());
    TORCH_CHECK(saved.device() == grad.device(), "dropout_ext: saved bits must be on ", grad.device(), ", got ",
                saved.device());
  } else {
    rng = saved;
  }
  // Backward multiplies by keep * scale: the Dropout op with the kind's scale. From bits
  // the shard's place in the full tensor plays no part (the bits are the local mask's), and
  // leaving it out lets the dims of a column shard merge into one contiguous run.
  Call c = make_call(Op::Dropout, grad, rng, no_gen, p, kind, lead, 0, from_bits ? OptInts() : gs,
                     from_bits ? OptInts() : go);
  c10::OptionalDeviceGuard guard(grad.device());
  Tensor out;
  if (strides.has_value()) {
    TORCH_CHECK_VALUE(static_cast<int64_t>(strides->size()) == grad.dim(), "dropout_ext: strides need ", grad.dim(),
                      " entries, got ", *strides);
    out = empty_strided_on(grad.sizes(), *strides, grad.scalar_type(), grad.device());
    TORCH_CHECK_VALUE(out.is_non_overlapping_and_dense(), "dropout_ext: strides ", *strides,
                      " are not dense for shape ", grad.sizes());
  } else {
    out = empty_like_dense(grad);
  }
  PassArgs a;
  a.dtype = dtype_of(grad);
  if (from_bits) {
    a.mask = make_mask_params(0, 0, p, c.kind);
    const Tensor b = saved.contiguous();
    run_data(a, c, out, nullptr, b.data_ptr<uint8_t>());
  } else {
    set_rng(a, c, nullptr);
    run_data(a, c, out, nullptr, nullptr);
  }
  return out;
}

// --------------------------------------------------- fused dropout + add + norm (rows)
// csrc/norm_args.h. Every check of _reference.check_norm_call, with its exception types
// and texts, runs before anything is allocated, drawn or written. The operands are seen
// as (rows, hidden) matrices with a row stride; outputs are contiguous.

namespace {

bool is_16bit(at::ScalarType s) { return s == at::kHalf || s == at::kBFloat16; }

at::ScalarType norm_acc(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

// dtype and device of an operand of `ref` (named `ref_name` in the texts); `or_f32`: float32
// is allowed besides ref's dtype.
void check_norm_operand(const Tensor& ref, const char* ref_name, const Tensor& t, const char* name, bool or_f32) {
  check_floating(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type() || (or_f32 && t.scalar_type() == at::kFloat),
                   "dropout_ext: ", name, " must have the ", ref_name, "'s dtype ", dtype_name(ref.scalar_type()),
                   or_f32 ? " or float32" : "", ", got ", dtype_name(t.scalar_type()));
  TORCH_CHECK(t.device() == ref.device(), "dropout_ext: ", name, " must be on the ", ref_name, "'s device ",
              ref.device(), ", got ", t.device());
}

// weight, bias, input_bias: 1-D of the last dim.
void check_norm_param(const Tensor& ref, const char* ref_name, const Tensor& t, const char* name, bool or_f32) {
  check_norm_operand(ref, ref_name, t, name, or_f32);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == ref.size(-1), "dropout_ext: ", name, " must be 1-D with the ", ref_name,
              "'s last dimension (", ref.size(-1), "), got shape ", t.sizes());
}

void check_norm_shard(const Tensor& input, const OptInts& gs, const OptInts& go) {
  check_global(input, gs, go);
  if (!gs) return;
  TORCH_CHECK_VALUE(gs->back() == input.size(-1) && go->back() == 0,
                    "dropout_ext: a shard of the normalized (last) dim is not supported: global_shape[-1] must be the "
                    "input's last dim (", input.size(-1), ") and global_offset[-1] 0, got ", *gs, " and ", *go);
}

int64_t leading_rows(const Tensor& t) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) n *= t.size(d);
  return n;
}

// The global row of each local row of a shard (norm_args.h, RowMap): the leading dims of
// size 1 are dropped and neighbours merged where the inner one is whole in the global
// shape, so that any number of dims fits unless more than kNormMaxLead of them are cut.
RowMap norm_rowmap(const Tensor& input, const OptInts& gs, const OptInts& go) {
  RowMap m;
  if (!gs) return m;
  const int64_t lead = input.dim() - 1;
  std::vector<int64_t> gstride(lead);
  int64_t s = 1;
  for (int64_t d = lead - 1; d >= 0; --d) {
    gstride[d] = s;
    s *= (*gs)[d];
  }
  std::vector<int64_t> size, stride;
  for (int64_t d = 0; d < lead; ++d) {
    m.first += (*go)[d] * gstride[d];
    const int64_t n = input.size(d);
    if (n == 1) continue;
    if (!size.empty() && stride.back() == gstride[d] * n) {
      size.back() *= n;
      stride.back() = gstride[d];
    } else {
      size.push_back(n);
      stride.push_back(gstride[d]);
    }
  }
  TORCH_CHECK(static_cast<int64_t>(size.size()) <= kNormMaxLead, "dropout_ext: the fused norm ops take a shard whose "
              "leading dims merge into at most ", kNormMaxLead, " dims, got the input (shape ", input.sizes(),
              ") at global_offset ", *go, " of global_shape ", *gs);
  if (size.empty()) {  // one row
    size.push_back(1);
    stride.push_back(1);
  }
  m.nlead = static_cast<int>(size.size());
  for (int d = 0; d < m.nlead; ++d) {
    m.size[d] = size[d];
    m.gstride[d] = stride[d];
  }
  return m;
}

// t as a (rows, hidden) matrix, element (r, c) at data + r * *rs + c: t itself when its
// last dim is contiguous and its leading dims collapse into one row stride (0: expanded),
// else its contiguous copy.
Tensor as_rows(const Tensor& t, int64_t* rs) {
  const int64_t nd = t.dim();
  const int64_t hidden = t.size(nd - 1);
  bool ok = hidden <= 1 || t.stride(nd - 1) == 1;
  int64_t row = -1, inner = 1;
  for (int64_t d = nd - 2; ok && d >= 0; --d) {
    const int64_t n = t.size(d);
    if (n == 1) continue;
    if (row < 0) row = t.stride(d);  // the innermost leading dim that is not 1
    else ok = t.stride(d) == row * inner;
    inner *= n;
  }
  if (!ok) {
    *rs = hidden;
    return t.contiguous();
  }
  *rs = row < 0 ? hidden : row;
  return t;
}

// A tiny (hidden,) parameter, contiguous and in `dtype`.
Tensor norm_param(const OptTensor& t, at::ScalarType dtype) {
  if (!given(t)) return Tensor();
  Tensor c = t->contiguous();
  return c.scalar_type() == dtype ? c : c.to(dtype);
}

Tensor empty_contiguous(at::IntArrayRef sizes, at::ScalarType dtype, const at::Device& device) {
  std::vector<int64_t> strides(sizes.size());
  int64_t s = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    strides[d] = s;
    s *= std::max<int64_t>(sizes[d], 1);
  }
  return empty_strided_on(sizes, strides, dtype, device);
}

void run_norm(NormArgs& a, const at::Device& device, bool forward) {
  if (device.is_cpu()) return forward ? cpu_norm_forward(a) : cpu_norm_backward(a);
#ifdef DROPOUT_EXT_WITH_CUDA
  if (device.is_cuda()) return forward ? cuda_norm_forward(a) : cuda_norm_backward(a);
#endif
  TORCH_CHECK(false, "dropout_ext: no kernel for device ", device);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dropout_add_norm_kernel(
    const Tensor& input, const OptTensor& residual, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& input_bias, const OptTensor& rng, const OptGenerator& gen, double p, double eps, bool rms,
    bool residual_in_fp32, int64_t save, OptInts gs, OptInts go) {
  // _reference.check_norm_call, in its order
  check_floating(input, "input");
  TORCH_CHECK(input.dim() >= 1, "dropout_ext: the normalized input needs at least 1 dim, got a 0-dim tensor");
  check_p(p);
  check_save(save);
  if (given(residual)) {
    check_norm_operand(input, "input", *residual, "residual", residual_in_fp32);
    TORCH_CHECK(residual->sizes() == input.sizes(), "dropout_ext: residual must have the input's shape ",
                input.sizes(), ", got ", residual->sizes());
  }
  if (given(weight)) check_norm_param(input, "input", *weight, "weight", true);
  if (given(bias)) check_norm_param(input, "input", *bias, "bias", true);
  if (given(input_bias)) check_norm_param(input, "input", *input_bias, "input_bias", false);
  check_norm_shard(input, gs, go);
  if (given(rng)) check_rng(*rng, input);
  check_generator(gen, input);
  NormArgs a;
  a.rowmap = norm_rowmap(input, gs, go);

  c10::OptionalDeviceGuard guard(input.device());
  const at::Device device = input.device();
  const at::ScalarType dt = input.scalar_type(), acc = norm_acc(dt);
  const bool half = is_16bit(dt);
  const int64_t hidden = input.size(-1), rows = leading_rows(input), numel = rows * hidden;
  a.dtype = dtype_of(input);
  a.h_f32 = half && residual_in_fp32;
  a.res_f32 = half && given(residual) && residual->scalar_type() == at::kFloat;
  // weight and bias in one dtype: float32 if either is (a 16-bit one converts exactly)
  a.param_f32 = half && ((given(weight) && weight->scalar_type() == at::kFloat) ||
                         (given(bias) && bias->scalar_type() == at::kFloat));
  a.rms = rms;
  a.rows = rows;
  a.hidden = hidden;
  a.eps = eps;
  const Tensor x = as_rows(input, &a.x_rs);
  // a float32 residual of a float64 input (residual_in_fp32): widened, exactly (rare)
  const Tensor r = !given(residual) ? Tensor()
                   : (!half && residual->scalar_type() != dt) ? as_rows(residual->to(dt), &a.res_rs)
                                                              : as_rows(*residual, &a.res_rs);
  const Tensor w = norm_param(weight, a.param_f32 ? at::kFloat : dt);
  const Tensor b = norm_param(bias, a.param_f32 ? at::kFloat : dt);
  const Tensor ib = norm_param(input_bias, dt);
  Tensor out = empty_contiguous(input.sizes(), dt, device);
  Tensor h = empty_contiguous(input.sizes(), a.h_f32 ? at::kFloat : dt, device);
  Tensor mean = empty_1d(rms ? 0 : rows, acc, device);
  Tensor rstd = empty_1d(rows, acc, device);
  Tensor saved;
  Call c = make_call(Op::DropoutAdd, input, rng, gen, p, 0, input.dim(), save, gs, go);
  PassArgs pa;
  set_rng(pa, c, save == kSaveRng ? &saved : nullptr);  // drawn even for p == 0, as dropout_add draws
  a.mask = pa.mask;
  a.rng = pa.rng;
  a.rng_out = pa.rng_out;
  if (save == kSaveBits) {
    saved = bit_buffer(numel, device, /*zeroed=*/device.is_cuda());  // the CPU kernels write every byte
    a.bits_out = saved.data_ptr<uint8_t>();
  } else if (save == kSaveNone) {
    saved = empty_1d(0, at::kByte, device);
  }
  a.x = x.data_ptr();
  a.residual = r.defined() ? r.data_ptr() : nullptr;
  a.input_bias = ib.defined() ? ib.data_ptr() : nullptr;
  a.weight = w.defined() ? w.data_ptr() : nullptr;
  a.bias = b.defined() && !rms ? b.data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.h = h.data_ptr();
  a.mean = rms ? nullptr : mean.data_ptr();
  a.rstd = rstd.data_ptr();
  if (numel == 0) {
    // Rows of no elements: mean 0 and rstd 1 / sqrt(eps), as the reference gives them.
    if (rows > 0) {
      if (!rms) mean.zero_();
      rstd.fill_(acc == at::kDouble ? 1.0 / std::sqrt(eps) : 1.0f / std::sqrt(static_cast<float>(eps)));
    }
    // A launch with no element only writes the resolved (key, base) (CUDA, save 2).
    if (!a.rng_out) return {out, h, mean, rstd, saved};
  }
  run_norm(a, device, true);
  return {out, h, mean, rstd, saved};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dropout_add_norm_backward_kernel(
    const Tensor& grad_out, const OptTensor& grad_h, const Tensor& h, const OptTensor& weight, const OptTensor& bias,
    const Tensor& mean, const Tensor& rstd, const Tensor& saved, double p, bool rms, bool input_bias_grad, OptInts gs,
    OptInts go) {
  check_floating(grad_out, "grad_out");
  TORCH_CHECK(grad_out.dim() >= 1, "dropout_ext: grad_out needs at least 1 dim, got a 0-dim tensor");
  check_p(p);
  const at::ScalarType dt = grad_out.scalar_type(), acc = norm_acc(dt);
  const bool half = is_16bit(dt);
  const int64_t hidden = grad_out.size(-1), rows = leading_rows(grad_out), numel = rows * hidden;
  check_norm_operand(grad_out, "grad_out", h, "h", half);
  TORCH_CHECK(h.sizes() == grad_out.sizes(), "dropout_ext: h must have grad_out's shape ", grad_out.sizes(), ", got ",
              h.sizes());
  if (given(grad_h)) {
    check_norm_operand(h, "h", *grad_h, "grad_h", false);
    TORCH_CHECK(grad_h->sizes() == grad_out.sizes(), "dropout_ext: grad_h must have grad_out's shape ",
                grad_out.sizes(), ", got ", grad_h->sizes());
  }
  if (given(weight)) check_norm_param(grad_out, "grad_out", *weight, "weight", true);
  if (given(bias)) check_norm_param(grad_out, "grad_out", *bias, "bias", true);
  for (const Tensor* t : {&mean, &rstd}) {
    const char* name = t == &mean ? "mean" : "rstd";
    const int64_t n = t == &mean && rms ? 0 : rows;
    TORCH_CHECK(t->scalar_type() == acc && t->device() == grad_out.device() && t->dim() == 1 && t->size(0) == n,
                "dropout_ext: ", name, " must be a ", dtype_name(acc), " tensor of shape [", n, "] on ",
                grad_out.device(), ", got ", dtype_name(t->scalar_type()), " of shape ", t->sizes(), " on ",
                t->device());
  }
  const bool from_bits = saved.scalar_type() == at::kByte;
  if (from_bits) {
    TORCH_CHECK(saved.numel() == (numel + 7) / 8, "dropout_ext: saved bits must hold ", (numel + 7) / 8,
                " bytes, got ", saved.numel());
    TORCH_CHECK(saved.device() == grad_out.device(), "dropout_ext: saved bits must be on ", grad_out.device(),
                ", got ", saved.device());
  } else {
    check_rng(saved, grad_out);
  }
  check_norm_shard(grad_out, gs, go);
  NormArgs a;
  if (!from_bits) a.rowmap = norm_rowmap(grad_out, gs, go);  // bits are the local mask's

  c10::OptionalDeviceGuard guard(grad_out.device());
  const at::Device device = grad_out.device();
  a.dtype = dtype_of(grad_out);
  a.h_f32 = half && h.scalar_type() == at::kFloat;
  a.param_f32 = half && given(weight) && weight->scalar_type() == at::kFloat;
  a.rms = rms;
  a.rows = rows;
  a.hidden = hidden;
  const Tensor dy = as_rows(grad_out, &a.dy_rs);
  const Tensor gh = given(grad_h) ? as_rows(*grad_h, &a.dh_rs) : Tensor();
  const Tensor hc = h.contiguous(), mc = mean.contiguous(), rc = rstd.contiguous();
  const Tensor w = norm_param(weight, a.param_f32 ? at::kFloat : dt);
  Tensor grad_input = empty_contiguous(grad_out.sizes(), dt, device);
  Tensor grad_h_total = empty_contiguous(grad_out.sizes(), h.scalar_type(), device);
  Tensor grad_weight = empty_1d(given(weight) ? hidden : 0, acc, device);
  Tensor grad_bias = empty_1d(given(bias) && !rms ? hidden : 0, acc, device);
  Tensor grad_input_bias = empty_1d(input_bias_grad ? hidden : 0, acc, device);
  Tensor bits;
  std::optional<Tensor> rng;
  const std::optional<at::Generator> no_gen;
  Call c = make_call(Op::Dropout, grad_out, rng, no_gen, p, 0, grad_out.dim(), 0, gs, go);
  if (from_bits) {
    a.mask = make_mask_params(0, 0, p, Kind::Inverted);
    bits = saved.contiguous();
    a.bits_in = bits.data_ptr<uint8_t>();
  } else {
    rng = saved;
    PassArgs pa;
    set_rng(pa, c, nullptr);
    a.mask = pa.mask;
    a.rng = pa.rng;
  }
  a.weight = w.defined() ? w.data_ptr() : nullptr;
  a.h = hc.data_ptr();
  a.mean = rms ? nullptr : mc.data_ptr();
  a.rstd = rc.data_ptr();
  a.grad_out = dy.data_ptr();
  a.grad_h = gh.defined() ? gh.data_ptr() : nullptr;
  a.grad_input = grad_input.data_ptr();
  a.grad_h_total = grad_h_total.data_ptr();
  a.grad_weight = grad_weight.numel() ? grad_weight.data_ptr() : nullptr;
  a.grad_bias = grad_bias.numel() ? grad_bias.data_ptr() : nullptr;
  a.grad_input_bias = grad_input_bias.numel() ? grad_input_bias.data_ptr() : nullptr;
  if (numel == 0) {  // sums over no rows
    for (Tensor* t : {&grad_weight, &grad_bias, &grad_input_bias}) t->zero_();
    return {grad_input, grad_h_total, grad_weight, grad_bias, grad_input_bias};
  }
  run_norm(a, device, false);
  return {grad_input, grad_h_total, grad_weight, grad_bias, grad_input_bias};
}

}  // namespace DX_NS

namespace {
template <typename Lib>
void register_kernels(Lib& m) {
  m.impl("dropout", &DX_NS::dropout_kernel);
  m.impl("dropout_", &DX_NS::dropout_inplace_kernel);
  m.impl("dropout_add", &DX_NS::dropout_add_kernel);
  m.impl("bias_dropout_add", &DX_NS::bias_dropout_add_kernel);
  m.impl("dropout_backward", &DX_NS::dropout_backward_kernel);
  m.impl("dropout_add_norm", &DX_NS::dropout_add_norm_kernel);
  m.impl("dropout_add_norm_backward", &DX_NS::dropout_add_norm_backward_kernel);
}
}  // namespace

TORCH_LIBRARY_IMPL(DX_NS, CPU, m) { register_kernels(m); }
#ifdef DROPOUT_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(DX_NS, CUDA, m) { register_kernels(m); }
#endif
