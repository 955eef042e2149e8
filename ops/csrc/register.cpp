// Schemas of the native operators; the CPU and CUDA files register their kernels for them.
#include <torch/library.h>

TORCH_LIBRARY(deformbev_native, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output) "
      "-> (Tensor, Tensor, Tensor)");
}
