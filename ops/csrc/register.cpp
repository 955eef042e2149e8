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
  m.def(
      "deform_conv2d_forward(Tensor input, Tensor offset, Tensor mask, Tensor weight, Tensor? bias, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "int deform_groups) -> Tensor");
  m.def(
      "deform_conv2d_backward(Tensor input, Tensor offset, Tensor mask, Tensor weight, Tensor grad_output, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, "
      "int deform_groups) -> (Tensor, Tensor, Tensor, Tensor)");
}
