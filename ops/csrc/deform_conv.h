// Host-side DCNv2 shared by the CPU and CUDA entry points: argument checks and the per-sample driver
// (im2col -> one GEMM per convolution group; backward: GEMMs, col2im, offset/mask gradients). The
// device files provide the three per-sample kernels.
#pragma once

#include <ATen/ATen.h>
#include <algorithm>
#include <optional>

#include <tuple>

#include "deform_conv_math.h"

namespace dcn {

// Checks what the kernels rely on (the Python front end validates more thoroughly with ValueError;
// these guard direct calls of torch.ops.deformbev_native.*).
inline ConvDims check_conv(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                           const at::Tensor& weight, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                           int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups,
                           int64_t deform_groups) {
  TORCH_CHECK(input.dim() == 4, "input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "weight must be (O, C / groups, kh, kw), got ", weight.sizes());
  TORCH_CHECK(offset.dim() == 4 && mask.dim() == 4, "offset and mask must be 4-d, got ", offset.sizes(),
              " and ", mask.sizes());
  TORCH_CHECK(stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 && pad_h >= 0 && pad_w >= 0,
              "stride and dilation must be positive and padding non-negative");
  TORCH_CHECK(groups > 0 && deform_groups > 0, "groups and deform_groups must be positive");
  ConvDims d{input.size(0),  input.size(1),  input.size(2), input.size(3), weight.size(0), weight.size(2),
             weight.size(3), offset.size(2), offset.size(3), stride_h,     stride_w,       pad_h,
             pad_w,          dilation_h,     dilation_w,    groups,        deform_groups};
  TORCH_CHECK(d.channels > 0 && d.channels % groups == 0 && d.channels % deform_groups == 0 &&
                  d.out_channels % groups == 0 && weight.size(1) * groups == d.channels,
              "weight ", weight.sizes(), " does not match input ", input.sizes(), " with groups ", groups,
              " and deform_groups ", deform_groups);
  TORCH_CHECK(d.kernel_h > 0 && d.kernel_w > 0, "the kernel must not be empty, got weight ", weight.sizes());
  const int64_t out_h = (d.height + 2 * pad_h - dilation_h * (d.kernel_h - 1) - 1) / stride_h + 1;
  const int64_t out_w = (d.width + 2 * pad_w - dilation_w * (d.kernel_w - 1) - 1) / stride_w + 1;
  TORCH_CHECK(d.height + 2 * pad_h >= dilation_h * (d.kernel_h - 1) + 1 &&
                  d.width + 2 * pad_w >= dilation_w * (d.kernel_w - 1) + 1 && out_h == d.out_h &&
                  out_w == d.out_w,
              "offset ", offset.sizes(), " does not match the output size ", out_h, "x", out_w);
  const int64_t k = d.kernel_points();
  TORCH_CHECK(offset.sizes() == at::IntArrayRef({d.batch, 2 * deform_groups * k, out_h, out_w}),
              "offset must be (N, 2 * deform_groups * kh * kw, Ho, Wo), got ", offset.sizes());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({d.batch, deform_groups * k, out_h, out_w}),
              "mask must be (N, deform_groups * kh * kw, Ho, Wo), got ", mask.sizes());
  TORCH_CHECK(offset.scalar_type() == input.scalar_type() && mask.scalar_type() == input.scalar_type() &&
                  weight.scalar_type() == input.scalar_type(),
              "input, offset, mask and weight must share one dtype");
  for (const auto* t : {&offset, &mask, &weight}) {
    TORCH_CHECK(t->device() == input.device(), "all inputs must be on ", input.device(), ", got ", t->device());
  }
  return d;
}

// The per-sample kernels of one device. Tensors are contiguous and of one floating dtype, except the
// input-gradient planes, which are of the op-math dtype (float for half / bfloat16). `columns` is
// (C * K, chunk.size()) with rows ordered (channel, kernel point); offset_n, mask_n, grad_offset_n and
// grad_mask_n are the sample's whole (channels, Ho, Wo) tensors.
struct SampleKernels {
  int64_t max_column_elements;  // positions per chunk = max(1, this / (C * K))
  // columns = mask * bilinear samples of input_n (C, H, W) at the chunk's positions.
  void (*im2col)(const ConvDims& d, Chunk chunk, const at::Tensor& input_n, const at::Tensor& offset_n,
                 const at::Tensor& mask_n, const at::Tensor& columns);
  // grad_input_n (C, H, W) += the transpose of im2col applied to grad_columns.
  void (*col2im)(const ConvDims& d, Chunk chunk, const at::Tensor& offset_n, const at::Tensor& mask_n,
                 const at::Tensor& grad_columns, const at::Tensor& grad_input_n);
  // The chunk's positions of grad_offset_n (2 * G * K, Ho, Wo) and grad_mask_n (G * K, Ho, Wo).
  void (*offset_mask_grads)(const ConvDims& d, Chunk chunk, const at::Tensor& input_n,
                            const at::Tensor& offset_n, const at::Tensor& mask_n, const at::Tensor& grad_columns,
                            const at::Tensor& grad_offset_n, const at::Tensor& grad_mask_n);
};

// Column buffers reused by every chunk: views (C * K, chunk size) and (groups, C / groups * K, chunk size).
class Columns {
 public:
  Columns(const ConvDims& d, const SampleKernels& kernels, const at::TensorOptions& options)
      : rows_(d.channels * d.kernel_points()),
        groups_(d.groups),
        chunk_(std::max<int64_t>(1, std::min(d.positions(), kernels.max_column_elements / rows_))),
        buffer_(at::empty({rows_ * chunk_}, options)) {}

  int64_t chunk_positions() const { return chunk_; }
  at::Tensor all(Chunk c) const { return buffer_.narrow(0, 0, rows_ * c.size()).view({rows_, c.size()}); }
  at::Tensor grouped(Chunk c) const { return all(c).view({groups_, -1, c.size()}); }

 private:
  int64_t rows_, groups_, chunk_;
  at::Tensor buffer_;
};

inline at::Tensor forward(const SampleKernels& kernels, const at::Tensor& input, const at::Tensor& offset,
                          const at::Tensor& mask, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                          int64_t dilation_w, int64_t groups, int64_t deform_groups) {
  const ConvDims d = check_conv(input, offset, mask, weight, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                dilation_w, groups, deform_groups);
  const bool with_bias = bias.has_value() && bias->defined();
  if (with_bias) {
    TORCH_CHECK(bias->sizes() == at::IntArrayRef({d.out_channels}) &&
                    bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                "bias must be (O,) = (", d.out_channels, ",) of the input's dtype and device, got ",
                bias->sizes());
  }
  const auto input_c = input.contiguous(), offset_c = offset.contiguous(), mask_c = mask.contiguous();
  const auto weight_g = weight.contiguous().view({groups, d.out_channels / groups, -1});
  auto out = at::empty({d.batch, d.out_channels, d.out_h, d.out_w}, input.options());
  const Columns columns(d, kernels, input.options());
  for (int64_t n = 0; n < d.batch; ++n) {
    const auto out_g = out[n].view({groups, d.out_channels / groups, d.positions()});
    for (int64_t p = 0; p < d.positions(); p += columns.chunk_positions()) {
      const Chunk chunk{p, std::min(p + columns.chunk_positions(), d.positions())};
      kernels.im2col(d, chunk, input_c[n], offset_c[n], mask_c[n], columns.all(chunk));
      const auto columns_g = columns.grouped(chunk);
      for (int64_t g = 0; g < groups; ++g) {
        auto out_slice = out_g[g].narrow(1, chunk.begin, chunk.size());  // row stride Ho * Wo: BLAS writes it
        at::mm_out(out_slice, weight_g[g], columns_g[g]);
      }
    }
  }
  if (with_bias) out.add_(bias->view({1, d.out_channels, 1, 1}));
  return out;
}

// Gradients of input, offset, mask and weight (the bias gradient is grad_output summed over N, Ho, Wo).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const SampleKernels& kernels, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    const at::Tensor& weight, const at::Tensor& grad_output, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t deform_groups) {
  const ConvDims d = check_conv(input, offset, mask, weight, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                dilation_w, groups, deform_groups);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({d.batch, d.out_channels, d.out_h, d.out_w}),
              "grad_output must be (N, O, Ho, Wo), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == input.device(), "grad_output must be on ", input.device());
  const auto input_c = input.contiguous(), offset_c = offset.contiguous(), mask_c = mask.contiguous();
  const auto grad_c = grad_output.contiguous().to(input.scalar_type());
  const auto weight_g = weight.contiguous().view({groups, d.out_channels / groups, -1});
  const auto acc_options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  auto grad_input = at::zeros(input.sizes(), acc_options);
  auto grad_weight = at::zeros(weight_g.sizes(), acc_options);
  auto grad_offset = at::zeros_like(offset_c);
  auto grad_mask = at::zeros_like(mask_c);
  const Columns columns(d, kernels, input.options()), grad_columns(d, kernels, input.options());
  for (int64_t n = 0; n < d.batch; ++n) {
    const auto grad_out_g = grad_c[n].view({groups, d.out_channels / groups, d.positions()});
    for (int64_t p = 0; p < d.positions(); p += columns.chunk_positions()) {
      const Chunk chunk{p, std::min(p + columns.chunk_positions(), d.positions())};
      kernels.im2col(d, chunk, input_c[n], offset_c[n], mask_c[n], columns.all(chunk));
      const auto columns_g = columns.grouped(chunk), grad_columns_g = grad_columns.grouped(chunk);
      for (int64_t g = 0; g < groups; ++g) {
        const auto grad_out_slice = grad_out_g[g].narrow(1, chunk.begin, chunk.size());
        if (grad_weight.scalar_type() == input.scalar_type()) {
          grad_weight[g].addmm_(grad_out_slice, columns_g[g].t());
        } else {  // half / bfloat16 products accumulate in float
          grad_weight[g].add_(at::mm(grad_out_slice, columns_g[g].t()));
        }
        auto grad_columns_slice = grad_columns_g[g];
        at::mm_out(grad_columns_slice, weight_g[g].t(), grad_out_slice);
      }
      kernels.col2im(d, chunk, offset_c[n], mask_c[n], grad_columns.all(chunk), grad_input[n]);
      kernels.offset_mask_grads(d, chunk, input_c[n], offset_c[n], mask_c[n], grad_columns.all(chunk),
                                grad_offset[n], grad_mask[n]);
    }
  }
  return {grad_input.to(input.scalar_type()), grad_offset, grad_mask,
          grad_weight.view(weight.sizes()).to(input.scalar_type())};
}

}  // namespace dcn
