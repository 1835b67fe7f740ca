// CPU kernels of vlm_patchify (see PatchifyParams in kernels.h for the layout).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "npedit/cpu/dtype_cpu.h"

namespace npedit::cpu {
namespace {

// Work item: one band of P*M image rows of one sample (all channels), i.e. the consecutive
// pixel_values rows of one (b, row of merge blocks). The band goes through a per-thread buffer of
// C * P*M * W values, so that both the image and pixel_values are read and written in order (a
// direct gather/scatter is latency-bound: strided 56-byte pieces defeat the prefetchers).
// Loop bounds and constants are locals (stores through T* could alias p); the patch size is a
// template constant for the usual 14 (kP = 0: run time) so P-pixel pieces move as vector moves.
struct Band {
  int64_t C, H, W, P, T, M, blocks_h, blocks_w, cols, band_rows;

  explicit Band(const PatchifyParams& p)
      : C(p.channels), H(p.height), W(p.width), P(p.patch), T(p.temporal), M(p.merge),
        blocks_h(p.height / (p.patch * p.merge)), blocks_w(p.width / (p.patch * p.merge)),
        cols(static_cast<int64_t>(p.channels) * p.temporal * p.patch * p.patch),
        band_rows(blocks_w * p.merge * p.merge) {}

  int64_t buffer_size() const { return C * P * M * W; }
};

template <typename T, int kP>
void patchify_fwd_impl(const PatchifyParams& p) {
  const T* images = static_cast<const T*>(p.src);  // [B, C, H, W]
  T* out = static_cast<T*>(p.dst);                 // [rows, C T P P]
  const Band g(p);
  const int64_t P = kP > 0 ? kP : g.P, PP = P * P, Tn = g.T, M = g.M, C = g.C, H = g.H, W = g.W;
  const int64_t PM = P * M, bands = p.batch * g.blocks_h;
  float mean[kMaxChannels], std[kMaxChannels];
  std::copy(p.mean, p.mean + C, mean);
  std::copy(p.std, p.std + C, std);

#pragma omp parallel if (bands > 1)
  {
    std::vector<T> buffer(g.buffer_size());  // [C, P*M, W]: the band, normalised
#pragma omp for schedule(static)
    for (int64_t band = 0; band < bands; ++band) {
      const int64_t b = band / g.blocks_h, bh = band % g.blocks_h;
      for (int64_t c = 0; c < C; ++c) {
        const float m = mean[c], s = std[c];
        const T* src = images + ((b * C + c) * H + bh * PM) * W;
        T* buf = buffer.data() + c * PM * W;
#pragma omp simd
        for (int64_t i = 0; i < PM * W; ++i) buf[i] = from_float<T>(round_to<T>(to_float(src[i]) - m) / s);
      }
      T* dst = out + band * g.band_rows * g.cols;
      for (int64_t bw = 0; bw < g.blocks_w; ++bw) {
        for (int64_t mh = 0; mh < M; ++mh) {
          for (int64_t mw = 0; mw < M; ++mw, dst += g.cols) {
            const T* piece = buffer.data() + mh * P * W + (bw * M + mw) * P;
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t ph = 0; ph < P; ++ph) {
                const T* from = piece + (c * PM + ph) * W;
                T* to = dst + (c * Tn * P + ph) * P;
                for (int64_t t = 0; t < Tn; ++t) {
                  for (int64_t pw = 0; pw < P; ++pw) to[t * PP + pw] = from[pw];
                }
              }
            }
          }
        }
      }
    }
  }
}

template <typename T, int kP>
void patchify_bwd_impl(const PatchifyParams& p) {
  const T* grad = static_cast<const T*>(p.src);  // [rows, C T P P]
  T* grad_images = static_cast<T*>(p.dst);       // [B, C, H, W]
  const Band g(p);
  const int64_t P = kP > 0 ? kP : g.P, PP = P * P, Tn = g.T, M = g.M, C = g.C, H = g.H, W = g.W;
  const int64_t PM = P * M, bands = p.batch * g.blocks_h;
  float std[kMaxChannels];
  std::copy(p.std, p.std + C, std);

#pragma omp parallel if (bands > 1)
  {
    std::vector<float> buffer(g.buffer_size());  // [C, P*M, W]: the band's gradient summed over t
#pragma omp for schedule(static)
    for (int64_t band = 0; band < bands; ++band) {
      const int64_t b = band / g.blocks_h, bh = band % g.blocks_h;
      const T* src = grad + band * g.band_rows * g.cols;
      for (int64_t bw = 0; bw < g.blocks_w; ++bw) {
        for (int64_t mh = 0; mh < M; ++mh) {
          for (int64_t mw = 0; mw < M; ++mw, src += g.cols) {
            float* piece = buffer.data() + mh * P * W + (bw * M + mw) * P;
            for (int64_t c = 0; c < C; ++c) {
              for (int64_t ph = 0; ph < P; ++ph) {
                const T* from = src + (c * Tn * P + ph) * P;
                float* to = piece + (c * PM + ph) * W;
                for (int64_t pw = 0; pw < P; ++pw) to[pw] = to_float(from[pw]);
                for (int64_t t = 1; t < Tn; ++t) {
                  for (int64_t pw = 0; pw < P; ++pw) to[pw] += to_float(from[t * PP + pw]);
                }
              }
            }
          }
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const float s = std[c];
        const float* buf = buffer.data() + c * PM * W;
        T* dst = grad_images + ((b * C + c) * H + bh * PM) * W;
#pragma omp simd
        for (int64_t i = 0; i < PM * W; ++i) dst[i] = from_float<T>(round_to<T>(buf[i]) / s);
      }
    }
  }
}

}  // namespace

void patchify_fwd(const PatchifyParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    p.patch == 14 ? patchify_fwd_impl<T, 14>(p) : patchify_fwd_impl<T, 0>(p);
  });
}

void patchify_bwd(const PatchifyParams& p) {
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    p.patch == 14 ? patchify_bwd_impl<T, 14>(p) : patchify_bwd_impl<T, 0>(p);
  });
}

}  // namespace npedit::cpu
