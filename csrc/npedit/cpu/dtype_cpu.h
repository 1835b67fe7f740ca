// Element types of the CPU kernels: float, c10::Half and c10::BFloat16 (header-only c10 types).
// Conversions from float round to nearest even, as PyTorch's casts do; bfloat16 has its own
// branch-free bit versions here so that loops over it vectorise.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "npedit/kernels.h"

namespace npedit::cpu {

template <typename T>
inline float to_float(T v) { return static_cast<float>(v); }

template <>
inline float to_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T from_float(float v) { return static_cast<T>(v); }

template <>
inline c10::BFloat16 from_float(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;  // c10 maps every NaN to 0x7fc0
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7fc0u : rounded), c10::BFloat16::from_bits());
}

// Rounds a float to T and back: what storing an intermediate result in a T tensor does.
template <typename T>
inline float round_to(float v) { return to_float(from_float<T>(v)); }

template <typename T>
struct Tag { using type = T; };

// Calls f(Tag<T>{}) with T the element type named by dtype.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(Tag<float>{}); break;
    case DType::kFloat16: f(Tag<c10::Half>{}); break;
    case DType::kBFloat16: f(Tag<c10::BFloat16>{}); break;
  }
}

}  // namespace npedit::cpu
