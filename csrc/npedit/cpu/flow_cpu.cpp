// CPU kernels of dmd_loss and flow_noise over contiguous [B, n] buffers. OpenMP splits the work
// into fixed chunks of one sample each; reductions are summed per chunk in double and then over
// chunks in index order, so the result does not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include "npedit/cpu/dtype_cpu.h"

namespace npedit::cpu {
namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per work item

int64_t chunks_per_sample(int64_t per_sample) { return std::max<int64_t>(1, (per_sample + kChunk - 1) / kChunk); }

template <typename T>
void dmd_fwd_impl(const DmdFwdParams& p) {
  const T* x0 = static_cast<const T*>(p.x0);
  const T* xr = static_cast<const T*>(p.x_real);
  const T* xf = static_cast<const T*>(p.x_fake);
  const int64_t chunks = chunks_per_sample(p.per_sample);
  const int64_t items = p.batch * chunks;
  std::vector<double> abs_sum(items), sq_sum(items);  // per chunk: sum |x0 - xr|, sum (xf - xr)^2

#pragma omp parallel for schedule(static) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / chunks;
    const int64_t begin = b * p.per_sample + (item % chunks) * kChunk;
    const int64_t end = std::min(begin + kChunk, (b + 1) * p.per_sample);
    double s_abs = 0.0, s_sq = 0.0;
#pragma omp simd reduction(+ : s_abs, s_sq)
    for (int64_t i = begin; i < end; ++i) {
      const float r = to_float(xr[i]);
      const float d = to_float(xf[i]) - r;
      s_abs += std::fabs(to_float(x0[i]) - r);
      s_sq += static_cast<double>(d) * d;
    }
    abs_sum[item] = s_abs;
    sq_sum[item] = s_sq;
  }

  double total = 0.0;  // sum_b S2_b / norm_b^2
  for (int64_t b = 0; b < p.batch; ++b) {
    double s_abs = 0.0, s_sq = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      s_abs += abs_sum[b * chunks + c];
      s_sq += sq_sum[b * chunks + c];
    }
    const float norm = std::max(static_cast<float>(s_abs / static_cast<double>(p.per_sample)), p.eps);
    p.norm[b] = norm;
    total += s_sq / (static_cast<double>(norm) * norm);
  }
  *p.loss = static_cast<float>(0.5 * total / (static_cast<double>(p.batch) * static_cast<double>(p.per_sample)));
}

template <typename T>
void dmd_bwd_impl(const DmdBwdParams& p) {
  const T* xr = static_cast<const T*>(p.x_real);
  const T* xf = static_cast<const T*>(p.x_fake);
  T* out = static_cast<T*>(p.grad_x0);
  const float scale = *p.grad_loss / static_cast<float>(p.batch * p.per_sample);
  const int64_t chunks = chunks_per_sample(p.per_sample);
  const int64_t items = p.batch * chunks;

#pragma omp parallel for schedule(static) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / chunks;
    const int64_t begin = b * p.per_sample + (item % chunks) * kChunk;
    const int64_t end = std::min(begin + kChunk, (b + 1) * p.per_sample);
    const float norm = p.norm[b];
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      out[i] = from_float<T>((to_float(xf[i]) - to_float(xr[i])) / norm * scale);
    }
  }
}

template <typename T>
void flow_noise_fwd_impl(const FlowNoiseParams& p) {
  const T* x0 = static_cast<const T*>(p.a);
  const T* noise = static_cast<const T*>(p.b);
  T* x_t = static_cast<T*>(p.out0);
  T* v = static_cast<T*>(p.out1);
  const int64_t chunks = chunks_per_sample(p.per_sample);
  const int64_t items = p.batch * chunks;

#pragma omp parallel for schedule(static) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / chunks;
    const int64_t begin = b * p.per_sample + (item % chunks) * kChunk;
    const int64_t end = std::min(begin + kChunk, (b + 1) * p.per_sample);
    const float t = p.t[b * p.t_stride];
    const float one_minus_t = 1.0f - t;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float a = to_float(x0[i]), n = to_float(noise[i]);
      x_t[i] = from_float<T>(one_minus_t * a + t * n);
      v[i] = from_float<T>(n - a);
    }
  }
}

// A missing gradient (nullptr) reads as zero; HasX / HasV keep loads out of the vector loop.
template <typename T, bool HasX, bool HasV>
void flow_noise_bwd_range(const T* g_xt, const T* g_v, T* g_x0, T* g_noise, float t, int64_t begin, int64_t end) {
  const float one_minus_t = 1.0f - t;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float gx = HasX ? to_float(g_xt[i]) : 0.0f;
    const float gv = HasV ? to_float(g_v[i]) : 0.0f;
    g_x0[i] = from_float<T>(round_to<T>(one_minus_t * gx) - gv);
    g_noise[i] = from_float<T>(round_to<T>(t * gx) + gv);
  }
}

template <typename T>
void flow_noise_bwd_impl(const FlowNoiseParams& p) {
  const T* g_xt = static_cast<const T*>(p.a);  // may be null
  const T* g_v = static_cast<const T*>(p.b);   // may be null
  T* g_x0 = static_cast<T*>(p.out0);
  T* g_noise = static_cast<T*>(p.out1);
  const int64_t chunks = chunks_per_sample(p.per_sample);
  const int64_t items = p.batch * chunks;

#pragma omp parallel for schedule(static) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / chunks;
    const int64_t begin = b * p.per_sample + (item % chunks) * kChunk;
    const int64_t end = std::min(begin + kChunk, (b + 1) * p.per_sample);
    const float t = p.t[b * p.t_stride];
    if (g_xt && g_v) {
      flow_noise_bwd_range<T, true, true>(g_xt, g_v, g_x0, g_noise, t, begin, end);
    } else if (g_xt) {
      flow_noise_bwd_range<T, true, false>(g_xt, g_v, g_x0, g_noise, t, begin, end);
    } else {
      flow_noise_bwd_range<T, false, true>(g_xt, g_v, g_x0, g_noise, t, begin, end);
    }
  }
}

}  // namespace

void dmd_fwd(const DmdFwdParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) { dmd_fwd_impl<typename decltype(tag)::type>(p); });
}

void dmd_bwd(const DmdBwdParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) { dmd_bwd_impl<typename decltype(tag)::type>(p); });
}

void flow_noise_fwd(const FlowNoiseParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) { flow_noise_fwd_impl<typename decltype(tag)::type>(p); });
}

void flow_noise_bwd(const FlowNoiseParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) { flow_noise_bwd_impl<typename decltype(tag)::type>(p); });
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace npedit::cpu
