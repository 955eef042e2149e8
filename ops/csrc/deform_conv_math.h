// Per-sample math of modulated deformable convolution (DCNv2), shared by the CPU and the CUDA kernels.
//
// The bilinear corner struct and the gather / scatter helpers are those of the attention op
// (ms_deform_attn_math.h); DCN samples in pixel coordinates instead of normalized ones: the corner
// (h, w) holds input[h, w] and corners outside the H x W plane read zero.
#pragma once

#include <cstdint>

#include "ms_deform_attn_math.h"

namespace dcn {

using msda::Corners;
using msda::pixel_corners;

// Sizes and hyper-parameters of one convolution.
struct ConvDims {
  int64_t batch, channels, height, width;
  int64_t out_channels, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t groups, deform_groups;

  MSDA_HOST_DEVICE int64_t kernel_points() const { return kernel_h * kernel_w; }
  MSDA_HOST_DEVICE int64_t positions() const { return out_h * out_w; }
  MSDA_HOST_DEVICE int64_t plane() const { return height * width; }
  MSDA_HOST_DEVICE int64_t channels_per_deform_group() const { return channels / deform_groups; }
};

// A block of output positions [begin, end) of one sample: the unit of im2col, GEMM and col2im, so that
// the column buffer stays bounded (and cache-sized on the CPU) whatever the image size.
struct Chunk {
  int64_t begin, end;
  MSDA_HOST_DEVICE int64_t size() const { return end - begin; }
};

// Corners of kernel point k of deform group g at output position l = i * out_w + j of one sample:
// offset_n is that sample's (2 * G * K, Ho, Wo) offsets, (dy, dx) at channels 2 * (g * K + k) + {0, 1}.
template <typename acc_t, typename scalar_t>
MSDA_HOST_DEVICE Corners<acc_t> kernel_point_corners(const ConvDims& d, const scalar_t* offset_n, int64_t g,
                                                      int64_t k, int64_t l) {
  const int64_t gk = g * d.kernel_points() + k;
  const int64_t i = l / d.out_w, j = l % d.out_w;
  const int64_t ki = k / d.kernel_w, kj = k % d.kernel_w;
  const acc_t dy = static_cast<acc_t>(offset_n[(2 * gk) * d.positions() + l]);
  const acc_t dx = static_cast<acc_t>(offset_n[(2 * gk + 1) * d.positions() + l]);
  const acc_t h = static_cast<acc_t>(i * d.stride_h - d.pad_h + ki * d.dilation_h) + dy;
  const acc_t w = static_cast<acc_t>(j * d.stride_w - d.pad_w + kj * d.dilation_w) + dx;
  return pixel_corners<acc_t>(h, w, d.height, d.width, 1);
}

}  // namespace dcn
