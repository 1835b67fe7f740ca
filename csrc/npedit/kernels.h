// Plain parameter structs and entry points of npedit._C's kernels. No ATen and no CUDA headers:
// the CPU kernels (cpu/*.cpp), the CUDA launchers (cuda/*.cu) and the ATen boundary (api.cpp)
// all include this file. Every buffer is contiguous; [B, n] means B samples of n elements.
#pragma once

#include <cstdint>

namespace npedit {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// dmd_loss forward, one read of the three inputs:
//   norm_b = max(mean_i |x0 - x_real|, eps),  loss = 0.5 / (B n) * sum_b sum_i ((x_fake - x_real) / norm_b)^2
struct DmdFwdParams {
  const void* x0;      // [B, n] dtype
  const void* x_real;  // [B, n] dtype
  const void* x_fake;  // [B, n] dtype
  float* loss;         // []  fp32
  float* norm;         // [B] fp32
  int64_t batch;
  int64_t per_sample;
  float eps;
  DType dtype;
};

// dmd_loss backward: grad_x0 = (x_fake - x_real) / norm_b * (grad_loss / (B n)), written in dtype.
struct DmdBwdParams {
  const float* grad_loss;  // []  fp32 (a device pointer on CUDA)
  const void* x_real;      // [B, n] dtype
  const void* x_fake;      // [B, n] dtype
  const float* norm;       // [B] fp32, from the forward
  void* grad_x0;           // [B, n] dtype
  int64_t batch;
  int64_t per_sample;
  DType dtype;
};

// flow_noise forward: x_t = (1 - t_b) x0 + t_b noise, v = noise - x0 (fp32 math, one rounding).
// backward: grad_x0 = r((1 - t_b) g_xt) - g_v, grad_noise = r(t_b g_xt) + g_v, with r() the
// rounding to dtype, as the reference's autograd computes them; a null grad pointer reads as 0.
struct FlowNoiseParams {
  const void* a;       // fwd: x0 [B, n]     bwd: grad_x_t [B, n] or nullptr
  const void* b;       // fwd: noise [B, n]  bwd: grad_v [B, n] or nullptr
  const float* t;      // [B] fp32, or [1] with t_stride 0
  int64_t t_stride;
  void* out0;          // fwd: x_t   bwd: grad_x0     [B, n] dtype
  void* out1;          // fwd: v     bwd: grad_noise  [B, n] dtype
  int64_t batch;
  int64_t per_sample;
  DType dtype;
};

constexpr int kMaxChannels = 16;

// vlm_patchify: images [B, C, H, W] <-> pixel_values [B gh gw, C T P P], gh = H / P, gw = W / P,
// rows ordered (b, gh / M, gw / M, M, M), columns (c, t, ph, pw) as Qwen2VLImageProcessor.
//   fwd: dst = r(r(src - mean_c) / std_c) repeated T times          (src images, dst rows)
//   bwd: dst = r(r(sum_t src) / std_c)                              (src grad rows, dst grad images)
// mean/std are already rounded to dtype (the reference builds them as tensors of images' dtype).
struct PatchifyParams {
  const void* src;
  void* dst;
  int64_t batch;
  int channels;
  int height;
  int width;
  int patch;     // P
  int temporal;  // T
  int merge;     // M
  float mean[kMaxChannels];
  float std[kMaxChannels];
  DType dtype;
};

namespace cpu {
void dmd_fwd(const DmdFwdParams& p);
void dmd_bwd(const DmdBwdParams& p);
void flow_noise_fwd(const FlowNoiseParams& p);
void flow_noise_bwd(const FlowNoiseParams& p);
void patchify_fwd(const PatchifyParams& p);
void patchify_bwd(const PatchifyParams& p);
bool built_with_openmp();
}  // namespace cpu

// CUDA launchers (cuda/*.cu): enqueue on `stream` (a cudaStream_t) and return nullptr, or an
// error message when the launch failed. Pointers in the params are device pointers.
namespace cuda {
int64_t dmd_workspace_floats(int64_t batch, int64_t per_sample);
const char* dmd_fwd(const DmdFwdParams& p, float* workspace, void* stream);
const char* dmd_bwd(const DmdBwdParams& p, void* stream);
const char* flow_noise_fwd(const FlowNoiseParams& p, void* stream);
const char* flow_noise_bwd(const FlowNoiseParams& p, void* stream);
const char* patchify_fwd(const PatchifyParams& p, void* stream);
const char* patchify_bwd(const PatchifyParams& p, void* stream);
constexpr int64_t kMaxBatch = 65535;  // samples ride on gridDim.y
}  // namespace cuda

}  // namespace npedit
