// ctest of the CPU paths of npedit_C: each op (through the dispatcher, as Python calls it) and each
// backward against an ATen transcription of its PyTorch reference (npedit/ops/flow.py, patchify.py),
// determinism of the DMD reduction across thread counts, and the human error messages.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <functional>
#include <string>

#include "npedit/kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using at::Tensor;

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s  %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++g_failures;
}

// Runs fn, which must throw a c10::Error whose message contains `needle`.
void expect_error(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    expect(msg.find(needle) != std::string::npos, what + " (message: " + msg.substr(0, 160) + ")");
    return;
  }
  expect(false, what + " (no error)");
}

bool close(const Tensor& a, const Tensor& b, double rtol, double atol) {
  return a.sizes() == b.sizes() && at::allclose(a.to(at::kDouble), b.to(at::kDouble), rtol, atol);
}

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using DmdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double);
using DmdBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&);
using FlowSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&);
using FlowBwdSig = std::tuple<Tensor, Tensor>(const std::optional<Tensor>&, const std::optional<Tensor>&,
                                              const Tensor&);
using PatchSig = Tensor(const Tensor&, at::ArrayRef<double>, at::ArrayRef<double>, int64_t, int64_t, int64_t);
using PatchBwdSig = Tensor(const Tensor&, at::ArrayRef<double>, c10::SymIntArrayRef, int64_t, int64_t, int64_t);

constexpr double kEps = 1e-8;

void test_dmd(at::ScalarType dtype, at::IntArrayRef shape) {
  const std::string tag = std::string("dmd_loss ") + c10::toString(dtype) + " " + c10::str(shape);
  const auto opts = at::TensorOptions().dtype(dtype);
  const Tensor x0 = at::randn(shape, opts), xr = at::randn(shape, opts), xf = at::randn(shape, opts);
  // reference: norm_b = mean |x0 - xr|, grad = (xf - xr) / norm, loss = 0.5 mse(x0, x0 - grad)
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x0.dim(); ++d) dims.push_back(d);
  const Tensor norm_ref = (x0.to(at::kFloat) - xr.to(at::kFloat)).abs().mean(dims, true).clamp_min(kEps);
  const Tensor grad = (xf.to(at::kFloat) - xr.to(at::kFloat)) / norm_ref;
  const Tensor loss_ref = 0.5 * at::mse_loss(x0.to(at::kFloat), x0.to(at::kFloat) - grad);
  const Tensor grad_ref = (grad / static_cast<double>(x0.numel()) * 1.5).to(dtype);

  auto [loss, norm] = op<DmdSig>("npedit_C::dmd_loss").call(x0, xr, xf, kEps);
  expect(close(loss, loss_ref, 1e-5, 1e-7) && loss.scalar_type() == at::kFloat, tag + ": loss");
  expect(close(norm, norm_ref.reshape({-1}), 1e-5, 1e-7), tag + ": norm");
  const Tensor g = op<DmdBwdSig>("npedit_C::dmd_loss_backward").call(at::full({}, 1.5), xr, xf, norm);
  const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
  expect(g.scalar_type() == dtype && close(g, grad_ref, tol, 1e-6 * grad_ref.abs().max().item<double>()),
         tag + ": grad_x0");
}

void test_dmd_threads() {
#ifdef _OPENMP
  const Tensor x0 = at::randn({3, 70001}), xr = at::randn({3, 70001}), xf = at::randn({3, 70001});
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  auto [loss1, norm1] = op<DmdSig>("npedit_C::dmd_loss").call(x0, xr, xf, kEps);
  omp_set_num_threads(threads > 1 ? threads : 2);
  auto [loss2, norm2] = op<DmdSig>("npedit_C::dmd_loss").call(x0, xr, xf, kEps);
  omp_set_num_threads(threads);
  expect(at::equal(loss1, loss2) && at::equal(norm1, norm2), "dmd_loss: same bits with 1 and several threads");
#else
  std::printf("skip  dmd_loss thread determinism (built without OpenMP)\n");
#endif
}

void test_flow(at::ScalarType dtype, at::IntArrayRef shape, bool one_t) {
  const std::string tag = std::string("flow_noise ") + c10::toString(dtype) + " " + c10::str(shape);
  const auto opts = at::TensorOptions().dtype(dtype);
  const Tensor x0 = at::randn(shape, opts), noise = at::randn(shape, opts);
  const Tensor t = at::rand({one_t ? 1 : shape[0]}, at::kDouble);
  std::vector<int64_t> tshape(shape.size(), 1);
  tshape[0] = -1;
  const Tensor tb = t.reshape(tshape).to(at::kFloat);
  const Tensor xt_ref = ((1 - tb) * x0.to(at::kFloat) + tb * noise.to(at::kFloat)).to(dtype);
  const Tensor v_ref = (noise.to(at::kFloat) - x0.to(at::kFloat)).to(dtype);
  auto [x_t, v] = op<FlowSig>("npedit_C::flow_noise").call(x0, noise, t);
  expect(at::equal(x_t, xt_ref) && at::equal(v, v_ref), tag + ": x_t, v bit-equal to the reference");

  const Tensor gx = at::randn(shape, opts), gv = at::randn(shape, opts);
  // the reference's autograd: each branch rounded to dtype, then summed in dtype
  const Tensor gx0_ref = ((1 - tb) * gx.to(at::kFloat)).to(dtype) - gv;
  const Tensor gn_ref = (tb * gx.to(at::kFloat)).to(dtype) + gv;
  auto [gx0, gn] = op<FlowBwdSig>("npedit_C::flow_noise_backward").call(gx, gv, t);
  expect(at::equal(gx0, gx0_ref) && at::equal(gn, gn_ref), tag + ": grads bit-equal to the reference");
  auto [gx0_v, gn_v] = op<FlowBwdSig>("npedit_C::flow_noise_backward").call(std::nullopt, gv, t);
  expect(at::equal(gx0_v, -gv) && at::equal(gn_v, gv), tag + ": grads with grad_x_t None");
}

Tensor patchify_ref(const Tensor& images, const std::vector<double>& mean, const std::vector<double>& std, int64_t p,
                    int64_t tp, int64_t m) {
  const int64_t b = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const Tensor mean_t = at::tensor(mean, opts).to(images.scalar_type()).view({1, c, 1, 1});
  const Tensor std_t = at::tensor(std, opts).to(images.scalar_type()).view({1, c, 1, 1});
  Tensor x = ((images - mean_t) / std_t).unsqueeze(1).expand({b, tp, c, h, w});
  const int64_t gh = h / p, gw = w / p;
  x = x.reshape({b, 1, tp, c, gh / m, m, p, gw / m, m, p}).permute({0, 1, 4, 7, 5, 8, 3, 2, 6, 9});
  return x.reshape({b * gh * gw, c * tp * p * p});
}

void test_patchify(at::ScalarType dtype, int64_t b, int64_t c, int64_t h, int64_t w, int64_t p, int64_t tp, int64_t m) {
  const std::string tag = std::string("vlm_patchify ") + c10::toString(dtype) + " " +
                          c10::str(std::vector<int64_t>{b, c, h, w, p, tp, m});
  std::vector<double> mean, std;
  for (int64_t i = 0; i < c; ++i) {
    mean.push_back(0.4 + 0.03 * static_cast<double>(i));
    std.push_back(0.26 + 0.01 * static_cast<double>(i));
  }
  const Tensor images = at::rand({b, c, h, w}, at::TensorOptions().dtype(dtype));
  const Tensor out = op<PatchSig>("npedit_C::vlm_patchify").call(images, mean, std, p, tp, m);
  expect(at::equal(out, patchify_ref(images, mean, std, p, tp, m)), tag + ": bit-equal to the reference");

  const Tensor grad = at::randn(out.sizes(), out.options());
  // reference backward: sum over the T copies (in dtype), then / std (in dtype)
  const Tensor summed = grad.reshape({b, h / (p * m), w / (p * m), m, m, c, tp, p, p}).sum(6).permute(
      {0, 5, 1, 3, 6, 2, 4, 7});
  const Tensor std_t = at::tensor(std, at::TensorOptions().dtype(at::kDouble)).to(dtype).view({1, c, 1, 1});
  const Tensor grad_ref = summed.reshape({b, c, h, w}) / std_t;
  const std::vector<c10::SymInt> size{c10::SymInt(b), c10::SymInt(c), c10::SymInt(h), c10::SymInt(w)};
  const Tensor g = op<PatchBwdSig>("npedit_C::vlm_patchify_backward").call(grad, std, size, p, tp, m);
  expect(at::equal(g, grad_ref), tag + ": grad bit-equal to the reference");
}

void test_errors() {
  const Tensor x = at::randn({2, 3, 4});
  auto dmd = op<DmdSig>("npedit_C::dmd_loss");
  expect_error([&] { dmd.call(x.to(at::kInt), x.to(at::kInt), x.to(at::kInt), kEps); }, "float32, float16 or bfloat16",
               "dmd_loss rejects int tensors");
  expect_error([&] { dmd.call(x, x.to(at::kHalf), x, kEps); }, "cast them to one dtype", "dmd_loss rejects a dtype mix");
  expect_error([&] { dmd.call(x, x.reshape({2, 12}), x, kEps); }, "they must match", "dmd_loss rejects a shape mix");
  expect_error([&] { dmd.call(x.reshape({-1}), x.reshape({-1}), x.reshape({-1}), kEps); },
               "at least one dimension per sample", "dmd_loss rejects a 1-d x0");
  auto flow = op<FlowSig>("npedit_C::flow_noise");
  expect_error([&] { flow.call(x, x, at::rand({3})); }, "one t per sample", "flow_noise rejects a wrong t");
  auto patch = op<PatchSig>("npedit_C::vlm_patchify");
  const std::vector<double> three{0.5, 0.5, 0.5};
  expect_error([&] { patch.call(at::rand({1, 3, 28, 30}), three, three, 14, 2, 2); },
               "not a multiple of patch_size*merge_size=28", "vlm_patchify rejects 28x30 images");
  expect_error([&] { patch.call(at::rand({1, 3, 28, 28}), std::vector<double>{0.5}, three, 14, 2, 2); },
               "one value per channel", "vlm_patchify rejects a short mean");
  expect_error([&] { patch.call(at::rand({3, 28, 28}), three, three, 14, 2, 2); }, "[B, C, H, W]",
               "vlm_patchify rejects 3-d images");
}

}  // namespace

int main() {
  std::printf("npedit_C CPU kernels, OpenMP %s\n", npedit::cpu::built_with_openmp() ? "on" : "off");
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    test_dmd(dtype, {2, 4, 8, 8});
    test_dmd(dtype, {3, 47});
    test_flow(dtype, {3, 5, 7}, false);
    test_flow(dtype, {2, 33000}, true);
    test_patchify(dtype, 2, 3, 28, 56, 14, 2, 2);
    test_patchify(dtype, 1, 4, 12, 6, 2, 3, 3);
  }
  test_dmd(at::kFloat, {2, 40000});  // several chunks per sample
  test_dmd_threads();
  test_errors();
  std::printf("%d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
