// CUDA kernels of vlm_patchify: one block per pixel_values row, its threads over the row's C*P*P
// image pixels. Forward reads each pixel once and writes it T times (consecutive threads write
// consecutive columns); backward reads the T copies and writes the pixel once.
#include "npedit/cuda/common.cuh"

namespace npedit::cuda {
namespace {

constexpr int kPatchThreads = 128;

struct Geometry {
  int channels, height, width, patch, temporal, merge;
  int blocks_h, blocks_w;  // H / (P M), W / (P M)
};

Geometry geometry(const PatchifyParams& p) {
  const int unit = p.patch * p.merge;
  return {p.channels, p.height, p.width, p.patch, p.temporal, p.merge, p.height / unit, p.width / unit};
}

struct Constants {
  float mean[kMaxChannels];
  float std[kMaxChannels];
};

Constants constants(const PatchifyParams& p) {
  Constants k{};
  for (int c = 0; c < p.channels; ++c) {
    k.mean[c] = p.mean[c];
    k.std[c] = p.std[c];
  }
  return k;
}

// Offset of row `row`'s top-left pixel (channel 0) in the [B, C, H, W] image buffer.
__device__ __forceinline__ int64_t row_origin(const Geometry& g, int64_t row) {
  int64_t r = row;
  const int mw = static_cast<int>(r % g.merge);
  r /= g.merge;
  const int mh = static_cast<int>(r % g.merge);
  r /= g.merge;
  const int bw = static_cast<int>(r % g.blocks_w);
  r /= g.blocks_w;
  const int bh = static_cast<int>(r % g.blocks_h);
  const int64_t b = r / g.blocks_h;
  const int64_t y0 = static_cast<int64_t>(bh * g.merge + mh) * g.patch;
  const int64_t x0 = static_cast<int64_t>(bw * g.merge + mw) * g.patch;
  return (b * g.channels * g.height + y0) * g.width + x0;
}

template <typename T>
__global__ void patchify_fwd_kernel(const T* __restrict__ images, T* __restrict__ out, Geometry g, Constants k) {
  const int pp = g.patch * g.patch;
  const int64_t row = blockIdx.x;
  const int64_t origin = row_origin(g, row);
  T* dst = out + row * static_cast<int64_t>(g.channels) * g.temporal * pp;
  for (int e = threadIdx.x; e < g.channels * pp; e += blockDim.x) {
    const int c = e / pp, rem = e - c * pp;
    const int ph = rem / g.patch, pw = rem - ph * g.patch;
    const float x = to_float(images[origin + (static_cast<int64_t>(c) * g.height + ph) * g.width + pw]);
    const T v = from_float<T>(__fdiv_rn(round_to<T>(__fsub_rn(x, k.mean[c])), k.std[c]));
    for (int t = 0; t < g.temporal; ++t) dst[(c * g.temporal + t) * pp + rem] = v;
  }
}

template <typename T>
__global__ void patchify_bwd_kernel(const T* __restrict__ grad, T* __restrict__ grad_images, Geometry g, Constants k) {
  const int pp = g.patch * g.patch;
  const int64_t row = blockIdx.x;
  const int64_t origin = row_origin(g, row);
  const T* src = grad + row * static_cast<int64_t>(g.channels) * g.temporal * pp;
  for (int e = threadIdx.x; e < g.channels * pp; e += blockDim.x) {
    const int c = e / pp, rem = e - c * pp;
    const int ph = rem / g.patch, pw = rem - ph * g.patch;
    float sum = 0.0f;
    for (int t = 0; t < g.temporal; ++t) sum = __fadd_rn(sum, to_float(src[(c * g.temporal + t) * pp + rem]));
    grad_images[origin + (static_cast<int64_t>(c) * g.height + ph) * g.width + pw] =
        from_float<T>(__fdiv_rn(round_to<T>(sum), k.std[c]));
  }
}

int64_t num_rows(const PatchifyParams& p) { return p.batch * (p.height / p.patch) * (p.width / p.patch); }

}  // namespace

const char* patchify_fwd(const PatchifyParams& p, void* stream) {
  const int64_t rows = num_rows(p);
  if (rows > 0x7fffffff) return "too many pixel_values rows for one launch";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    patchify_fwd_kernel<T><<<static_cast<unsigned>(rows), kPatchThreads, 0, s>>>(
        static_cast<const T*>(p.src), static_cast<T*>(p.dst), geometry(p), constants(p));
  });
  return launch_status();
}

const char* patchify_bwd(const PatchifyParams& p, void* stream) {
  const int64_t rows = num_rows(p);
  if (rows > 0x7fffffff) return "too many pixel_values rows for one launch";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    patchify_bwd_kernel<T><<<static_cast<unsigned>(rows), kPatchThreads, 0, s>>>(
        static_cast<const T*>(p.src), static_cast<T*>(p.dst), geometry(p), constants(p));
  });
  return launch_status();
}

}  // namespace npedit::cuda
