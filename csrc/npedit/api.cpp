// ATen boundary of npedit._C: the TORCH_LIBRARY schemas of the npedit_C ops, argument checks with
// human messages, and the hand-off of plain params structs (kernels.h) to the C++ CPU kernels or
// the CUDA launchers. Non-contiguous inputs are copied to contiguous ones first.
// Fake (meta) kernels and autograd formulas are registered in Python: npedit/ops/_ext.py.
// The specification of every op is its PyTorch reference in npedit/ops (flow.py, patchify.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "npedit/kernels.h"

#ifdef NPEDIT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
// Runs `launch` (an expression that may use `stream`) on x's device and current stream.
#define NPEDIT_LAUNCH_CUDA(x, op, launch)                                                      \
  do {                                                                                         \
    const c10::cuda::CUDAGuard device_guard((x).device());                                     \
    void* stream = c10::cuda::getCurrentCUDAStream((x).device().index()).stream();            \
    const char* launch_error = (launch);                                                       \
    TORCH_CHECK(launch_error == nullptr, op, ": CUDA kernel launch failed: ", launch_error);   \
  } while (0)
#else
#define NPEDIT_LAUNCH_CUDA(x, op, launch) TORCH_CHECK(false, op, kNoCudaMessage)
#endif

namespace npedit {
namespace {

using at::Tensor;

[[maybe_unused]] constexpr const char* kNoCudaMessage =
    ": npedit._C was built without CUDA kernels (a CPU-only torch or no CUDA toolkit at build time); "
    "rebuild it with a CUDA build of torch and NPEDIT_BUILD_CUDA=1, or set NPEDIT_OPS=ref";

DType dtype_of(const Tensor& x, const char* op, const char* name) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " has dtype ", x.scalar_type(),
                  "; the compiled kernels take float32, float16 or bfloat16 (the reference npedit.ops.", op,
                  "_ref takes any floating dtype)");
  }
}

// The first input of an op: defined, on a supported device, of a supported dtype.
DType check_primary(const Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(x.is_cpu() || x.is_cuda(), op, ": ", name, " is on ", x.device(),
              "; the compiled kernels run on CPU and CUDA tensors only");
#ifndef NPEDIT_WITH_CUDA
  TORCH_CHECK(!x.is_cuda(), op, kNoCudaMessage);
#endif
  return dtype_of(x, op, name);
}

void check_device(const Tensor& x, const char* name, const Tensor& ref, const char* ref_name, const char* op) {
  TORCH_CHECK(x.defined(), op, ": ", name, " is an undefined tensor");
  TORCH_CHECK(x.device() == ref.device(), op, ": ", name, " is on ", x.device(), " but ", ref_name, " is on ",
              ref.device(), "; put all inputs on one device");
}

// Another input of the same device, dtype and shape as `ref`.
void check_like(const Tensor& x, const char* name, const Tensor& ref, const char* ref_name, const char* op) {
  check_device(x, name, ref, ref_name, op);
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", x.scalar_type(), " but ",
              ref_name, " has ", ref.scalar_type(), "; cast them to one dtype");
  TORCH_CHECK(x.sizes() == ref.sizes(), op, ": ", name, " has shape ", x.sizes(), " but ", ref_name, " has shape ",
              ref.sizes(), "; they must match");
}

// t: [B] or one value, any floating dtype, on ref's device -> contiguous fp32 [B] or [1].
Tensor per_sample_t(const Tensor& t, const Tensor& ref, const char* ref_name, int64_t batch, const char* op) {
  check_device(t, "t", ref, ref_name, op);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": t has dtype ", t.scalar_type(),
              "; it must be a floating tensor");
  TORCH_CHECK(t.numel() == batch || t.numel() == 1, op, ": t has ", t.numel(), " values (shape ", t.sizes(),
              ") but the batch has ", batch, " samples; give one t per sample ([B]) or a single one");
  return t.to(at::kFloat).contiguous().reshape({-1});
}

void check_batch(int64_t batch, const Tensor& x, const char* op) {
  TORCH_CHECK(!x.is_cuda() || batch <= cuda::kMaxBatch, op, ": batch of ", batch,
              " samples is over the CUDA kernels' limit of ", cuda::kMaxBatch);
}

// ---- dmd_loss --------------------------------------------------------------------------------

// x0, x_real, x_fake [B, ...] -> (loss [] fp32, norm [B] fp32)
std::tuple<Tensor, Tensor> dmd_loss(const Tensor& x0_in, const Tensor& x_real_in, const Tensor& x_fake_in,
                                    double eps) {
  constexpr const char* op = "dmd_loss";
  const DType dtype = check_primary(x0_in, op, "x0");
  check_like(x_real_in, "x_real", x0_in, "x0", op);
  check_like(x_fake_in, "x_fake", x0_in, "x0", op);
  TORCH_CHECK(x0_in.dim() >= 2, op, ": x0 must be [B, ...] with at least one dimension per sample, got shape ",
              x0_in.sizes());
  TORCH_CHECK(x0_in.numel() > 0, op, ": the inputs are empty (shape ", x0_in.sizes(), ")");
  TORCH_CHECK(eps > 0, op, ": eps must be positive, got ", eps);
  const Tensor x0 = x0_in.contiguous(), x_real = x_real_in.contiguous(), x_fake = x_fake_in.contiguous();
  const int64_t batch = x0.size(0);
  check_batch(batch, x0, op);
  const auto f32 = x0.options().dtype(at::kFloat);
  Tensor loss = at::empty({}, f32);
  Tensor norm = at::empty({batch}, f32);
  const DmdFwdParams p{x0.data_ptr(), x_real.data_ptr(), x_fake.data_ptr(), loss.data_ptr<float>(),
                       norm.data_ptr<float>(), batch, x0.numel() / batch, static_cast<float>(eps), dtype};
  if (x0.is_cpu()) {
    cpu::dmd_fwd(p);
  } else {
#ifdef NPEDIT_WITH_CUDA
    Tensor workspace = at::empty({cuda::dmd_workspace_floats(p.batch, p.per_sample)}, f32);
#endif
    NPEDIT_LAUNCH_CUDA(x0, op, cuda::dmd_fwd(p, workspace.data_ptr<float>(), stream));
  }
  return {loss, norm};
}

// grad_loss [] (one value), x_real, x_fake [B, ...], norm [B] fp32 -> grad_x0 [B, ...] in x_real's dtype
Tensor dmd_loss_backward(const Tensor& grad_loss_in, const Tensor& x_real_in, const Tensor& x_fake_in,
                         const Tensor& norm_in) {
  constexpr const char* op = "dmd_loss_backward";
  const DType dtype = check_primary(x_real_in, op, "x_real");
  check_like(x_fake_in, "x_fake", x_real_in, "x_real", op);
  check_device(grad_loss_in, "grad_loss", x_real_in, "x_real", op);
  check_device(norm_in, "norm", x_real_in, "x_real", op);
  TORCH_CHECK(x_real_in.dim() >= 2 && x_real_in.numel() > 0, op, ": x_real must be a non-empty [B, ...], got shape ",
              x_real_in.sizes());
  TORCH_CHECK(grad_loss_in.numel() == 1, op, ": grad_loss must hold one value, got shape ", grad_loss_in.sizes());
  const int64_t batch = x_real_in.size(0);
  TORCH_CHECK(norm_in.numel() == batch, op, ": norm must be [B] = [", batch, "], got shape ", norm_in.sizes());
  check_batch(batch, x_real_in, op);
  const Tensor x_real = x_real_in.contiguous(), x_fake = x_fake_in.contiguous();
  const Tensor grad_loss = grad_loss_in.to(at::kFloat).contiguous();
  const Tensor norm = norm_in.to(at::kFloat).contiguous();
  Tensor grad_x0 = at::empty(x_real.sizes(), x_real.options());
  const DmdBwdParams p{grad_loss.data_ptr<float>(), x_real.data_ptr(), x_fake.data_ptr(), norm.data_ptr<float>(),
                       grad_x0.data_ptr(), batch, x_real.numel() / batch, dtype};
  if (x_real.is_cpu()) {
    cpu::dmd_bwd(p);
  } else {
    NPEDIT_LAUNCH_CUDA(x_real, op, cuda::dmd_bwd(p, stream));
  }
  return grad_x0;
}

// ---- flow_noise ------------------------------------------------------------------------------

// x0, noise [B, ...], t [B] or [1] -> (x_t, v) [B, ...] in x0's dtype
std::tuple<Tensor, Tensor> flow_noise(const Tensor& x0_in, const Tensor& noise_in, const Tensor& t_in) {
  constexpr const char* op = "flow_noise";
  const DType dtype = check_primary(x0_in, op, "x0");
  check_like(noise_in, "noise", x0_in, "x0", op);
  TORCH_CHECK(x0_in.dim() >= 1, op, ": x0 must be [B, ...], got a 0-dim tensor");
  const int64_t batch = x0_in.size(0);
  const Tensor t = per_sample_t(t_in, x0_in, "x0", batch, op);
  check_batch(batch, x0_in, op);
  const Tensor x0 = x0_in.contiguous(), noise = noise_in.contiguous();
  Tensor x_t = at::empty(x0.sizes(), x0.options());
  Tensor v = at::empty(x0.sizes(), x0.options());
  if (x0.numel() == 0) return {x_t, v};
  const FlowNoiseParams p{x0.data_ptr(), noise.data_ptr(), t.data_ptr<float>(), t.numel() == 1 ? 0 : 1,
                          x_t.data_ptr(), v.data_ptr(), batch, x0.numel() / batch, dtype};
  if (x0.is_cpu()) {
    cpu::flow_noise_fwd(p);
  } else {
    NPEDIT_LAUNCH_CUDA(x0, op, cuda::flow_noise_fwd(p, stream));
  }
  return {x_t, v};
}

// grad_x_t, grad_v [B, ...] (either may be None), t [B] or [1] -> (grad_x0, grad_noise) [B, ...]
std::tuple<Tensor, Tensor> flow_noise_backward(const std::optional<Tensor>& grad_x_t_in,
                                               const std::optional<Tensor>& grad_v_in, const Tensor& t_in) {
  constexpr const char* op = "flow_noise_backward";
  const bool has_xt = grad_x_t_in.has_value() && grad_x_t_in->defined();
  const bool has_v = grad_v_in.has_value() && grad_v_in->defined();
  TORCH_CHECK(has_xt || has_v, op, ": grad_x_t and grad_v are both None");
  const Tensor& ref = has_xt ? *grad_x_t_in : *grad_v_in;
  const char* ref_name = has_xt ? "grad_x_t" : "grad_v";
  const DType dtype = check_primary(ref, op, ref_name);
  if (has_xt && has_v) check_like(*grad_v_in, "grad_v", ref, ref_name, op);
  TORCH_CHECK(ref.dim() >= 1, op, ": ", ref_name, " must be [B, ...], got a 0-dim tensor");
  const int64_t batch = ref.size(0);
  const Tensor t = per_sample_t(t_in, ref, ref_name, batch, op);
  check_batch(batch, ref, op);
  const Tensor grad_x_t = has_xt ? grad_x_t_in->contiguous() : Tensor();
  const Tensor grad_v = has_v ? grad_v_in->contiguous() : Tensor();
  Tensor grad_x0 = at::empty(ref.sizes(), ref.options());
  Tensor grad_noise = at::empty(ref.sizes(), ref.options());
  if (ref.numel() == 0) return {grad_x0, grad_noise};
  const FlowNoiseParams p{has_xt ? grad_x_t.data_ptr() : nullptr, has_v ? grad_v.data_ptr() : nullptr,
                          t.data_ptr<float>(), t.numel() == 1 ? 0 : 1, grad_x0.data_ptr(), grad_noise.data_ptr(),
                          batch, ref.numel() / batch, dtype};
  if (ref.is_cpu()) {
    cpu::flow_noise_bwd(p);
  } else {
    NPEDIT_LAUNCH_CUDA(ref, op, cuda::flow_noise_bwd(p, stream));
  }
  return {grad_x0, grad_noise};
}

// ---- vlm_patchify ----------------------------------------------------------------------------

// Shape, sizes and per-channel constants of one patchify call; mean/std rounded to dtype as the
// reference does (torch.as_tensor(mean, dtype=images.dtype)).
PatchifyParams patchify_params(at::IntArrayRef image_size, at::ArrayRef<double> mean, at::ArrayRef<double> std,
                               int64_t patch, int64_t temporal, int64_t merge, at::ScalarType scalar_type,
                               DType dtype, const char* op) {
  TORCH_CHECK(image_size.size() == 4, op, ": images must be [B, C, H, W], got shape ", image_size);
  TORCH_CHECK(patch > 0 && temporal > 0 && merge > 0, op, ": patch_size (", patch, "), temporal_patch_size (",
              temporal, ") and merge_size (", merge, ") must be positive");
  const int64_t batch = image_size[0], channels = image_size[1], height = image_size[2], width = image_size[3];
  TORCH_CHECK(channels >= 1 && channels <= kMaxChannels, op, ": images have ", channels,
              " channels; the compiled kernels take 1 to ", kMaxChannels);
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == channels && static_cast<int64_t>(std.size()) == channels, op,
              ": mean and std need one value per channel (", channels, "), got ", mean.size(), " and ", std.size());
  const int64_t unit = patch * merge;
  TORCH_CHECK(height % unit == 0 && width % unit == 0, op, ": image size ", height, "x", width,
              " is not a multiple of patch_size*merge_size=", unit, "; resize (or crop) the images first");
  TORCH_CHECK(height <= INT32_MAX && width <= INT32_MAX && channels * temporal * patch * patch <= INT32_MAX, op,
              ": image or patch too large");
  PatchifyParams p{};
  p.batch = batch;
  p.channels = static_cast<int>(channels);
  p.height = static_cast<int>(height);
  p.width = static_cast<int>(width);
  p.patch = static_cast<int>(patch);
  p.temporal = static_cast<int>(temporal);
  p.merge = static_cast<int>(merge);
  p.dtype = dtype;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const Tensor mean_r = at::tensor(mean, f64).to(scalar_type).to(at::kFloat).contiguous();
  const Tensor std_r = at::tensor(std, f64).to(scalar_type).to(at::kFloat).contiguous();
  for (int64_t c = 0; c < channels; ++c) {
    p.mean[c] = mean_r.data_ptr<float>()[c];
    p.std[c] = std_r.data_ptr<float>()[c];
  }
  return p;
}

// images [B, C, H, W] -> pixel_values [B * gh * gw, C * T * P * P] in images' dtype
Tensor vlm_patchify(const Tensor& images_in, at::ArrayRef<double> mean, at::ArrayRef<double> std, int64_t patch_size,
                    int64_t temporal_patch_size, int64_t merge_size) {
  constexpr const char* op = "vlm_patchify";
  const DType dtype = check_primary(images_in, op, "images");
  PatchifyParams p = patchify_params(images_in.sizes(), mean, std, patch_size, temporal_patch_size, merge_size,
                                     images_in.scalar_type(), dtype, op);
  const Tensor images = images_in.contiguous();
  const int64_t rows = p.batch * (p.height / p.patch) * (p.width / p.patch);
  Tensor out = at::empty({rows, static_cast<int64_t>(p.channels) * p.temporal * p.patch * p.patch}, images.options());
  if (out.numel() == 0) return out;
  p.src = images.data_ptr();
  p.dst = out.data_ptr();
  if (images.is_cpu()) {
    cpu::patchify_fwd(p);
  } else {
    NPEDIT_LAUNCH_CUDA(images, op, cuda::patchify_fwd(p, stream));
  }
  return out;
}

// grad [B * gh * gw, C * T * P * P], image_size = [B, C, H, W] -> grad_images [B, C, H, W]
Tensor vlm_patchify_backward(const Tensor& grad_in, at::ArrayRef<double> std, at::IntArrayRef image_size,
                             int64_t patch_size, int64_t temporal_patch_size, int64_t merge_size) {
  constexpr const char* op = "vlm_patchify_backward";
  const DType dtype = check_primary(grad_in, op, "grad");
  const std::vector<double> zeros(std.size(), 0.0);
  PatchifyParams p = patchify_params(image_size, zeros, std, patch_size, temporal_patch_size, merge_size,
                                     grad_in.scalar_type(), dtype, op);
  const int64_t rows = p.batch * (p.height / p.patch) * (p.width / p.patch);
  const int64_t cols = static_cast<int64_t>(p.channels) * p.temporal * p.patch * p.patch;
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == rows && grad_in.size(1) == cols, op, ": grad must be [",
              rows, ", ", cols, "] for images of shape ", image_size, ", got ", grad_in.sizes());
  const Tensor grad = grad_in.contiguous();
  Tensor grad_images = at::empty(image_size, grad.options());
  if (grad_images.numel() == 0) return grad_images;
  p.src = grad.data_ptr();
  p.dst = grad_images.data_ptr();
  if (grad.is_cpu()) {
    cpu::patchify_bwd(p);
  } else {
    NPEDIT_LAUNCH_CUDA(grad, op, cuda::patchify_bwd(p, stream));
  }
  return grad_images;
}

}  // namespace
}  // namespace npedit

// Namespace npedit_C: the Triton ops own "npedit" (torch.library.custom_op).
TORCH_LIBRARY(npedit_C, m) {
  m.def("dmd_loss(Tensor x0, Tensor x_real, Tensor x_fake, float eps) -> (Tensor loss, Tensor norm)");
  m.def("dmd_loss_backward(Tensor grad_loss, Tensor x_real, Tensor x_fake, Tensor norm) -> Tensor");
  m.def("flow_noise(Tensor x0, Tensor noise, Tensor t) -> (Tensor x_t, Tensor v)");
  m.def("flow_noise_backward(Tensor? grad_x_t, Tensor? grad_v, Tensor t) -> (Tensor grad_x0, Tensor grad_noise)");
  m.def("vlm_patchify(Tensor images, float[] mean, float[] std, int patch_size, int temporal_patch_size, "
        "int merge_size) -> Tensor");
  m.def("vlm_patchify_backward(Tensor grad, float[] std, SymInt[] image_size, int patch_size, "
        "int temporal_patch_size, int merge_size) -> Tensor");
}

// One device-generic implementation per op: it checks devices and picks the CPU kernel or the
// CUDA launcher itself, so the CUDA key also gets the clear "built without CUDA" error.
#define NPEDIT_IMPL_ALL(m)                                                \
  m.impl("dmd_loss", &npedit::dmd_loss);                                  \
  m.impl("dmd_loss_backward", &npedit::dmd_loss_backward);                \
  m.impl("flow_noise", &npedit::flow_noise);                              \
  m.impl("flow_noise_backward", &npedit::flow_noise_backward);            \
  m.impl("vlm_patchify", &npedit::vlm_patchify);                          \
  m.impl("vlm_patchify_backward", &npedit::vlm_patchify_backward)

TORCH_LIBRARY_IMPL(npedit_C, CPU, m) { NPEDIT_IMPL_ALL(m); }
TORCH_LIBRARY_IMPL(npedit_C, CUDA, m) { NPEDIT_IMPL_ALL(m); }
