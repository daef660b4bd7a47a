// CPU launcher: ISA choice and threads. (key, base) from the CPU generator: draw_rng.cpp.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../launch.h"
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

Isa current_isa() { return static_cast<Isa>(isa_slot().load()); }

}  // namespace cpu

// The CPU engine draws the reduced mask of a channel-wise op in a pass of its own.
bool cpu_try_channel_pass(PassArgs&) { return false; }

void cpu_run_pass(PassArgs& a) {
  using namespace cpu;
  if (a.g.numel == 0) return;
  plan_loops(a.g, kTileRows / 2);
  using Fn = void (*)(const PassArgs&, int64_t, int64_t);
  Fn fn = run_range_scalar;
  switch (current_isa()) {
    case Isa::Avx512: fn = run_range_avx512; break;
    case Isa::Avx2: fn = run_range_avx2; break;
    case Isa::Scalar: break;
  }
  int64_t items, per_item;
  if (a.g.tile) {
    // Segments of one row from different items may share a 64-bit word of the bit mask:
    // they OR their bits into zeroed memory (engine.inc, or_bits).
    if (a.bits_out) std::memset(a.bits_out, 0, static_cast<size_t>((a.nbits + 7) / 8));
    const int64_t rows = a.g.size[a.g.mem], inner = a.g.size[a.g.ndim - 1];
    items = a.g.numel / (rows * inner) * ((inner + kTileCols - 1) / kTileCols);
    per_item = rows * kTileCols;
  } else {
    items = (a.g.numel + kRowItem - 1) / kRowItem;
    per_item = kRowItem;
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElements / per_item);
  if (items <= grain) {
    fn(a, 0, items);
    return;
  }
  at::parallel_for(0, items, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
}

}  // namespace dropout_ext

TORCH_LIBRARY_FRAGMENT(dropout_ext, m) {
  // The process-wide choice of the CPU path (DROPOUT_EXT_CPU_ISA gives the first one), as
  // torch's ATEN_CPU_CAPABILITY does for its own kernels; not part of the public API.
  m.def("_cpu_isa(str request) -> str", &dropout_ext::cpu::cpu_isa);
  m.def("_cpu_isas_supported() -> str[]", &dropout_ext::cpu::cpu_isas_supported);
}
