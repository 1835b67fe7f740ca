// CUDA kernels of dmd_loss and flow_noise over contiguous [B, n] buffers; grid = (blocks along a
// sample, B). The DMD reductions are deterministic: per-block partial sums, then one block adds
// them in index order. Products and sums use __fmul_rn / __fadd_rn so that nvcc does not fuse
// them into FMAs, which keeps the results bit-equal to PyTorch's separate elementwise kernels.
#include "npedit/cuda/common.cuh"

namespace npedit::cuda {
namespace {

// partial[b * gridDim.x + block] = (sum |x0 - x_real|, sum (x_fake - x_real)^2) over the block's slice
template <typename T>
__global__ void dmd_partial_kernel(const T* __restrict__ x0, const T* __restrict__ x_real,
                                   const T* __restrict__ x_fake, int64_t per_sample, float2* __restrict__ partial) {
  __shared__ float scratch[32];
  const int64_t base = static_cast<int64_t>(blockIdx.y) * per_sample;
  float s_abs = 0.0f, s_sq = 0.0f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float r = to_float(x_real[base + i]);
    const float d = to_float(x_fake[base + i]) - r;
    s_abs += fabsf(to_float(x0[base + i]) - r);
    s_sq += d * d;
  }
  s_abs = block_sum(s_abs, scratch);
  s_sq = block_sum(s_sq, scratch);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = make_float2(s_abs, s_sq);
}

// One block: norm_b from the partials of sample b, then the loss over all samples (in double).
__global__ void dmd_finish_kernel(const float2* __restrict__ partial, int blocks, int64_t batch, int64_t per_sample,
                                  float eps, float* __restrict__ norm, float* __restrict__ loss) {
  __shared__ double scratch[32];
  double total = 0.0;  // thread 0: sum_b S2_b / norm_b^2
  for (int64_t b = 0; b < batch; ++b) {
    double s_abs = 0.0, s_sq = 0.0;
    for (int j = threadIdx.x; j < blocks; j += blockDim.x) {
      const float2 v = partial[b * blocks + j];
      s_abs += v.x;
      s_sq += v.y;
    }
    s_abs = block_sum(s_abs, scratch);
    s_sq = block_sum(s_sq, scratch);
    if (threadIdx.x == 0) {
      const float nb = fmaxf(static_cast<float>(s_abs / static_cast<double>(per_sample)), eps);
      norm[b] = nb;
      total += s_sq / (static_cast<double>(nb) * nb);
    }
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(0.5 * total / (static_cast<double>(batch) * per_sample));
}

template <typename T>
__global__ void dmd_bwd_kernel(const float* __restrict__ grad_loss, const T* __restrict__ x_real,
                               const T* __restrict__ x_fake, const float* __restrict__ norm, T* __restrict__ grad_x0,
                               int64_t per_sample, float numel) {
  const int64_t base = static_cast<int64_t>(blockIdx.y) * per_sample;
  const float scale = __fdiv_rn(*grad_loss, numel);
  const float nb = norm[blockIdx.y];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = __fsub_rn(to_float(x_fake[base + i]), to_float(x_real[base + i]));
    grad_x0[base + i] = from_float<T>(__fmul_rn(__fdiv_rn(d, nb), scale));
  }
}

// x_t = (1 - t) x0 + t noise, v = noise - x0
template <typename T>
__global__ void flow_noise_fwd_kernel(const T* __restrict__ x0, const T* __restrict__ noise, const float* __restrict__ t,
                                      int64_t t_stride, T* __restrict__ x_t, T* __restrict__ v, int64_t per_sample) {
  const int64_t base = static_cast<int64_t>(blockIdx.y) * per_sample;
  const float tb = t[blockIdx.y * t_stride];
  const float one_minus_t = __fsub_rn(1.0f, tb);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float a = to_float(x0[base + i]), n = to_float(noise[base + i]);
    x_t[base + i] = from_float<T>(__fadd_rn(__fmul_rn(one_minus_t, a), __fmul_rn(tb, n)));
    v[base + i] = from_float<T>(__fsub_rn(n, a));
  }
}

// grad_x0 = r((1 - t) g_xt) - g_v, grad_noise = r(t g_xt) + g_v; a null gradient reads as zero
template <typename T>
__global__ void flow_noise_bwd_kernel(const T* __restrict__ g_xt, const T* __restrict__ g_v, const float* __restrict__ t,
                                      int64_t t_stride, T* __restrict__ g_x0, T* __restrict__ g_noise,
                                      int64_t per_sample) {
  const int64_t base = static_cast<int64_t>(blockIdx.y) * per_sample;
  const float tb = t[blockIdx.y * t_stride];
  const float one_minus_t = __fsub_rn(1.0f, tb);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_sample;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gx = g_xt != nullptr ? to_float(g_xt[base + i]) : 0.0f;
    const float gv = g_v != nullptr ? to_float(g_v[base + i]) : 0.0f;
    g_x0[base + i] = from_float<T>(__fsub_rn(round_to<T>(__fmul_rn(one_minus_t, gx)), gv));
    g_noise[base + i] = from_float<T>(__fadd_rn(round_to<T>(__fmul_rn(tb, gx)), gv));
  }
}

dim3 sample_grid(int64_t batch, int64_t per_sample) {
  return dim3(static_cast<unsigned>(blocks_per_sample(per_sample)), static_cast<unsigned>(batch));
}

}  // namespace

int64_t dmd_workspace_floats(int64_t batch, int64_t per_sample) {
  return 2 * batch * blocks_per_sample(per_sample);  // one float2 per (sample, block)
}

const char* dmd_fwd(const DmdFwdParams& p, float* workspace, void* stream) {
  if (p.batch > kMaxBatch) return "batch over the CUDA kernels' limit";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid = sample_grid(p.batch, p.per_sample);
  float2* partial = reinterpret_cast<float2*>(workspace);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dmd_partial_kernel<T><<<grid, kThreads, 0, s>>>(static_cast<const T*>(p.x0), static_cast<const T*>(p.x_real),
                                                    static_cast<const T*>(p.x_fake), p.per_sample, partial);
  });
  if (const char* err = launch_status()) return err;
  dmd_finish_kernel<<<1, kThreads, 0, s>>>(partial, static_cast<int>(grid.x), p.batch, p.per_sample, p.eps, p.norm,
                                           p.loss);
  return launch_status();
}

const char* dmd_bwd(const DmdBwdParams& p, void* stream) {
  if (p.batch > kMaxBatch) return "batch over the CUDA kernels' limit";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const dim3 grid = sample_grid(p.batch, p.per_sample);
  const float numel = static_cast<float>(p.batch * p.per_sample);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dmd_bwd_kernel<T><<<grid, kThreads, 0, s>>>(p.grad_loss, static_cast<const T*>(p.x_real),
                                                static_cast<const T*>(p.x_fake), p.norm, static_cast<T*>(p.grad_x0),
                                                p.per_sample, numel);
  });
  return launch_status();
}

const char* flow_noise_fwd(const FlowNoiseParams& p, void* stream) {
  if (p.batch > kMaxBatch) return "batch over the CUDA kernels' limit";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    flow_noise_fwd_kernel<T><<<sample_grid(p.batch, p.per_sample), kThreads, 0, s>>>(
        static_cast<const T*>(p.a), static_cast<const T*>(p.b), p.t, p.t_stride, static_cast<T*>(p.out0),
        static_cast<T*>(p.out1), p.per_sample);
  });
  return launch_status();
}

const char* flow_noise_bwd(const FlowNoiseParams& p, void* stream) {
  if (p.batch > kMaxBatch) return "batch over the CUDA kernels' limit";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    flow_noise_bwd_kernel<T><<<sample_grid(p.batch, p.per_sample), kThreads, 0, s>>>(
        static_cast<const T*>(p.a), static_cast<const T*>(p.b), p.t, p.t_stride, static_cast<T*>(p.out0),
        static_cast<T*>(p.out1), p.per_sample);
  });
  return launch_status();
}

}  // namespace npedit::cuda
