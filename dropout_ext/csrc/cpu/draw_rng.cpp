// (key, base) from the CPU generator (launch.h). Compiled into the product and into the
// testing module (whose CPU kernels are the emulated CUDA kernels), so that neither pulls
// in the other's launcher.
#include <ATen/CPUGeneratorImpl.h>

#include <mutex>

#include "../launch.h"

namespace DX_NS {

void cpu_draw_rng(const std::optional<at::Generator>& gen, MaskParams& m) {
  auto* g = at::get_generator_or_default<at::CPUGeneratorImpl>(gen, at::detail::getDefaultCPUGenerator());
  // As torch.randint(-2**63, 2**63 - 1, (2,), generator=g) draws them (CPU random_from_to:
  // random64() % range + low, one word after the other), which the Python backend and the
  // torch.compile route call.
  constexpr uint64_t kRange = ~uint64_t(0);  // (2**63 - 1) - (-2**63)
  std::lock_guard<std::mutex> lock(g->mutex_);
  m.key = g->random64() % kRange - (uint64_t(1) << 63);
  m.base = g->random64() % kRange - (uint64_t(1) << 63);
}

}  // namespace DX_NS
