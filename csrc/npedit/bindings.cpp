// Python module npedit._C. Loading it registers the npedit_C ops (api.cpp, used through
// torch.ops.npedit_C); what is not an op lives here: how the extension was built.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include "npedit/kernels.h"

#ifdef NPEDIT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "npedit compiled ops: torch.ops.npedit_C.{dmd_loss, flow_noise, vlm_patchify} and their backwards";
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["torch_version"] = TORCH_VERSION;  // the torch the extension was compiled against
#ifdef NPEDIT_WITH_CUDA
        info["with_cuda"] = true;
        info["cuda_runtime_version"] = CUDART_VERSION;
#else
        info["with_cuda"] = false;
        info["cuda_runtime_version"] = py::none();
#endif
        info["with_openmp"] = npedit::cpu::built_with_openmp();
        info["max_channels"] = npedit::kMaxChannels;
        info["namespace"] = "npedit_C";
        return info;
      },
      "What npedit._C was built with: torch_version, with_cuda, cuda_runtime_version, with_openmp, ...");
}
