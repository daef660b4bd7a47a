// The device side of a pass, one implementation per device, called by ops.cpp (device-
// generic glue), which fills a PassArgs. In the product: cpu/launch.cpp and cuda/launch.cu.
// In the testing module (testing/, namespace dropout_ext_testing): the CUDA kernels run on
// the host by the emulator (testing/cuda_emulation.cpp) take the CPU's place, and a tunable
// copy of cuda/launch.cu the GPU's. cpu_draw_rng (cpu/draw_rng.cpp) serves both.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "norm_args.h"
#include "ns.h"
#include "pass_args.h"

namespace DX_NS {

// Runs the pass on the CPU. Zeroes bits_out first in tile mode.
void cpu_run_pass(PassArgs& a);
// (key, base) for seed=None: two 64-bit words from the CPU generator (the default one or
// `gen`) under its lock, the same words `torch.randint(-2**63, 2**63 - 1, (2,),
// generator=gen)` gives (the Python backend and the torch.compile route draw them so).
void cpu_draw_rng(const std::optional<at::Generator>& gen, MaskParams& m);
// A channel-wise pass that draws its mask words (per leading-dims index) in the data pass
// itself, writing the per-channel bits to bits_out when set: true when the backend ran it
// (the CUDA flat kernel, for contiguous inputs with runs of at least 8 elements), false
// when the caller must draw the reduced mask first and pass it as bits_in. numel > 0.
bool cpu_try_channel_pass(PassArgs& a);
// The fused dropout + add + norm (norm_args.h): forward and backward over all rows.
void cpu_norm_forward(NormArgs& a);
void cpu_norm_backward(NormArgs& a);

#ifdef DROPOUT_EXT_WITH_CUDA
// Launches the pass on the current stream of the current device.
void cuda_run_pass(PassArgs& a);
bool cuda_try_channel_pass(PassArgs& a);
void cuda_norm_forward(NormArgs& a);
void cuda_norm_backward(NormArgs& a);
// (key, base) = (seed, offset) of the CUDA generator's Philox state, offset advanced by 4
// (torch.cuda's own increment unit). Under graph capture they are read by the kernel from
// the generator's device state, so each replay of a captured graph draws a fresh mask.
void cuda_draw_rng(const std::optional<at::Generator>& gen, const at::Device& device, PassArgs& a);
#endif

}  // namespace DX_NS
