// CPU kernels of the dropout_ext ops: argument checks, layout handling and threading
// around the raw kernels of kernels.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <atomic>
#include <map>
#include <mutex>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../common.h"
#include "kernels.h"

namespace dropout_ext {
namespace cpu {
namespace {

// Elements per thread task: below this a tensor runs on one thread.
constexpr int64_t kGrainElements = 1 << 15;

Isa isa_from_name(const std::string& s) {
  if (s == "scalar") return Isa::Scalar;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  TORCH_CHECK_VALUE(false, "dropout_ext: unknown CPU ISA '", s, "' (expected scalar, avx2 or avx512)");
}

// The path in use: DROPOUT_EXT_CPU_ISA if set (and supported), else the best available.
std::atomic<int>& isa_slot() {
  static std::atomic<int> slot([] {
    const char* env = std::getenv("DROPOUT_EXT_CPU_ISA");
    if (env && *env) {
      const Isa want = isa_from_name(env);
      if (isa_supported(want)) return static_cast<int>(want);
      TORCH_WARN("dropout_ext: DROPOUT_EXT_CPU_ISA=", env, " is not supported by this CPU; using ",
                 isa_name(best_isa()));
    }
    return static_cast<int>(best_isa());
  }());
  return slot;
}

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    default: check_floating(t, "input");
  }
  return DType::Float32;
}

// Large outputs (>= 8 MiB) get two treatments, because a fresh tensor costs more in page
// faults than the dropout itself (measured: x * 2.0 at 2**24 float32 takes 33 ms into a
// fresh tensor and 13.5 ms into a reused one):
//  - they are placed on transparent huge pages (2 MiB aligned + MADV_HUGEPAGE), as torch's
//    allocator does under THP_MEM_ALLOC_ENABLE=1 (DROPOUT_EXT_NO_HUGEPAGES=1 turns it off);
//  - freed blocks are kept for reuse, like the CUDA caching allocator does, up to
//    DROPOUT_EXT_CPU_CACHE_MB idle megabytes (default 1024; 0 turns it off). A training
//    loop then faults its dropout outputs in once instead of on every call.
//    dropout_ext.empty_cache() returns the idle blocks to the system.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kLargeBytes = size_t(8) << 20;  // padding to 2 MiB stays under 25%

class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: outlives every tensor
    return *cache;
  }
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = idle_.find(bytes);
    if (it == idle_.end()) return nullptr;
    void* p = it->second;
    idle_.erase(it);
    idle_bytes_ -= bytes;
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_bytes_ + bytes <= limit_) {
        idle_.emplace(bytes, p);
        idle_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  int64_t clear() {
    std::multimap<size_t, void*> blocks;
    int64_t freed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(idle_);
      freed = static_cast<int64_t>(idle_bytes_);
      idle_bytes_ = 0;
    }
    for (auto& b : blocks) std::free(b.second);
    return freed;
  }

 private:
  BlockCache() {
    const char* env = std::getenv("DROPOUT_EXT_CPU_CACHE_MB");
    limit_ = (env && *env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : 1024) << 20;
  }
  std::mutex mu_;
  std::multimap<size_t, void*> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_ = 0;
};

at::Tensor empty_rowmajor(const at::Tensor& like) {
  const size_t nbytes = static_cast<size_t>(like.numel()) * like.element_size();
  if (nbytes < kLargeBytes) return at::empty(like.sizes(), like.options());
  const size_t padded = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = BlockCache::get().take(padded);
  if (!p) {
    if (posix_memalign(&p, kHugePage, padded) != 0) return at::empty(like.sizes(), like.options());
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    static const bool no_hugepages = std::getenv("DROPOUT_EXT_NO_HUGEPAGES") != nullptr;
    if (!no_hugepages) madvise(p, padded, MADV_HUGEPAGE);  // a hint: without THP it changes nothing
#endif
  }
  return at::from_blob(p, like.sizes(), [padded](void* q) { BlockCache::get().give(q, padded); }, like.options());
}

int64_t empty_cpu_cache() { return BlockCache::get().clear(); }

void run_pass(PassArgs a) {
  if (a.numel == 0) return;
  if (a.group == 1) {
    using Fn = void (*)(const PassArgs&, int64_t, int64_t);
    Fn fn = run_range_scalar;
    switch (static_cast<Isa>(isa_slot().load())) {
      case Isa::Avx512: fn = run_range_avx512; break;
      case Isa::Avx2: fn = run_range_avx2; break;
      case Isa::Scalar: break;
    }
    const int64_t chunks = (a.numel + kChunk - 1) / kChunk;
    at::parallel_for(0, chunks, kGrainElements / kChunk, [&](int64_t b, int64_t e) {
      fn(a, b * kChunk, std::min(e * kChunk, a.numel));
    });
    return;
  }
  // Channel-wise / per-sample: draw the (small) mask of words first, then stream the data.
  const int64_t words = a.numel / a.group;
  std::vector<uint8_t> scratch;
  if (!a.bits_in) {
    uint8_t* bits = a.bits_out;
    if (!bits) {
      scratch.resize((words + 7) / 8);
      bits = scratch.data();
    }
    const int64_t bytes = (words + 7) / 8;
    at::parallel_for(0, bytes, kGrainElements / 8, [&](int64_t b, int64_t e) {
      fill_keep_bits(a.mask, b * 8, std::min(e * 8, words), bits);
    });
    a.bits_in = bits;
  }
  at::parallel_for(0, words, std::max<int64_t>(1, kGrainElements / a.group),
                   [&](int64_t b, int64_t e) { run_groups(a, b, e); });
}

PassArgs base_args(const at::Tensor& x, const at::Tensor& out, const MaskParams& m, int64_t group) {
  PassArgs a;
  a.dtype = dtype_of(x);
  a.numel = x.numel();
  a.x = x.data_ptr();
  a.out = out.data_ptr();
  a.mask = m;
  a.group = group;
  return a;
}

void check_cpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), "dropout_ext: ", what, " must be a CPU tensor here, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> dropout_cpu(const at::Tensor& input, const at::Tensor& rng,
                                               double p, bool scale_train, int64_t group,
                                               bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  const MaskParams m = mask_params_from_cpu(rng, p, scale_train);
  const at::Tensor x = input.contiguous();
  OutputBuffers o = make_output(input, empty_rowmajor);
  at::Tensor bits = new_bits(input, words, save_bits);
  PassArgs a = base_args(x, o.work, m, group);
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  run_pass(a);
  o.finish();
  return {o.out, bits};
}

at::Tensor dropout_inplace_cpu(at::Tensor& input, const at::Tensor& rng, double p, bool scale_train,
                               int64_t group, bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  const MaskParams m = mask_params_from_cpu(rng, p, scale_train);
  at::Tensor bits = new_bits(input, words, save_bits);
  const at::Tensor x = input.contiguous();
  // Element-wise, so reading and writing the same row-major buffer is safe.
  at::Tensor work = x.is_same(input) ? input : empty_rowmajor(x);
  PassArgs a = base_args(x, work, m, group);
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  run_pass(a);
  if (!work.is_same(input)) input.copy_(work);
  return bits;
}

at::Tensor apply_mask_bits_cpu(const at::Tensor& input, const at::Tensor& bits, double p,
                               bool scale_train, int64_t group) {
  check_floating(input, "input");
  check_p(p);
  const int64_t words = mask_words(input, group);
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.numel() == (words + 7) / 8,
              "dropout_ext: bits must be a uint8 tensor of ", (words + 7) / 8, " bytes, got ",
              bits.scalar_type(), " with ", bits.numel());
  check_cpu(bits, "bits");
  const at::Tensor x = input.contiguous();
  const at::Tensor b = bits.contiguous();
  OutputBuffers o = make_output(input, empty_rowmajor);
  PassArgs a = base_args(x, o.work, make_mask_params(0, 0, p, scale_train), group);
  a.bits_in = b.data_ptr<uint8_t>();
  run_pass(a);
  o.finish();
  return o.out;
}

std::tuple<at::Tensor, at::Tensor> fused_cpu(Op op, const at::Tensor& input, const at::Tensor* bias,
                                             const at::Tensor& residual, const at::Tensor& rng,
                                             double p, bool save_bits) {
  check_floating(input, "input");
  check_p(p);
  check_same(input, residual, "residual");
  if (bias) check_bias(input, *bias);
  const MaskParams m = mask_params_from_cpu(rng, p, /*scale_train=*/true);
  const at::Tensor x = input.contiguous();
  const at::Tensor r = residual.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  OutputBuffers o = make_output(input, empty_rowmajor);
  at::Tensor bits = new_bits(input, input.numel(), save_bits);
  PassArgs a = base_args(x, o.work, m, 1);
  a.op = op;
  a.residual = r.data_ptr();
  if (bias) {
    a.bias = b.data_ptr();
    a.bias_len = std::max<int64_t>(1, b.numel());
  }
  a.bits_out = save_bits ? bits.data_ptr<uint8_t>() : nullptr;
  run_pass(a);
  o.finish();
  return {o.out, bits};
}

std::tuple<at::Tensor, at::Tensor> dropout_add_cpu(const at::Tensor& input, const at::Tensor& residual,
                                                   const at::Tensor& rng, double p, bool save_bits) {
  return fused_cpu(Op::DropoutAdd, input, nullptr, residual, rng, p, save_bits);
}

std::tuple<at::Tensor, at::Tensor> bias_dropout_add_cpu(const at::Tensor& input, const at::Tensor& bias,
                                                        const at::Tensor& residual, const at::Tensor& rng,
                                                        double p, bool save_bits) {
  return fused_cpu(Op::BiasDropoutAdd, input, &bias, residual, rng, p, save_bits);
}

at::Tensor philox_cpu(const at::Tensor& counter, const at::Tensor& key) {
  TORCH_CHECK(counter.scalar_type() == at::kLong && counter.dim() >= 1 && counter.size(-1) == 4,
              "dropout_ext: counter must be int64 of shape [..., 4]");
  check_rng(key);
  const at::Tensor c = counter.contiguous();
  const at::Tensor k = key.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < c.numel() / 4; ++r) {
    const Philox4 w = philox4x32_10(
        static_cast<uint32_t>(cp[4 * r]), static_cast<uint32_t>(cp[4 * r + 1]),
        static_cast<uint32_t>(cp[4 * r + 2]), static_cast<uint32_t>(cp[4 * r + 3]),
        static_cast<uint32_t>(kp[0]), static_cast<uint32_t>(kp[1]));
    for (int q = 0; q < 4; ++q) op[4 * r + q] = w.v[q];
  }
  return out;
}

// Query (request "") or choose the CPU path; returns the path in use afterwards.
std::string cpu_isa(const std::string& request) {
  if (!request.empty()) {
    const Isa want = isa_from_name(request);
    TORCH_CHECK(isa_supported(want), "dropout_ext: this CPU does not support ", request);
    isa_slot().store(static_cast<int>(want));
  }
  return isa_name(static_cast<Isa>(isa_slot().load()));
}

std::vector<std::string> cpu_isas_supported() {
  std::vector<std::string> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.emplace_back(isa_name(i));
  return v;
}

}  // namespace
}  // namespace cpu
}  // namespace dropout_ext

TORCH_LIBRARY_FRAGMENT(dropout_ext, m) {
  // Process-wide switches for tests and the bench; not part of the public API.
  m.def("_cpu_isa(str request) -> str", &dropout_ext::cpu::cpu_isa);
  m.def("_cpu_isas_supported() -> str[]", &dropout_ext::cpu::cpu_isas_supported);
  m.def("_empty_cpu_cache() -> int", &dropout_ext::cpu::empty_cpu_cache);
}

TORCH_LIBRARY_IMPL(dropout_ext, CPU, m) {
  using namespace dropout_ext::cpu;
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_", &dropout_inplace_cpu);
  m.impl("apply_mask_bits", &apply_mask_bits_cpu);
  m.impl("dropout_add", &dropout_add_cpu);
  m.impl("bias_dropout_add", &bias_dropout_add_cpu);
  m.impl("philox4x32_10", &philox_cpu);
}
