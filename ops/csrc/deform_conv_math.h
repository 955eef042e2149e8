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

// Corners of the pixel coordinates (h, w) in a height x width map whose element (row, col) lives at
// (row * width + col) * row_stride. Same contract as msda::bilinear_corners (which is this function at
// h = y * height - 0.5, w = x * width - 0.5): a corner outside the map has offset 0 and zero
// coefficients; `any` is false when no corner is inside (also for non-finite coordinates). At an
// integer coordinate the slope is the one towards the next row / column, also at exactly -1 (as
// torchvision's deform_conv2d and grid_sample; mmcv returns a zero slope there).
template <typename acc_t>
MSDA_HOST_DEVICE Corners<acc_t> pixel_corners(acc_t h, acc_t w, int64_t height, int64_t width,
                                             int64_t row_stride) {
  Corners<acc_t> b;
  b.any = h >= acc_t(-1) && w >= acc_t(-1) && h < static_cast<acc_t>(height) &&
          w < static_cast<acc_t>(width);
  if (!b.any) {
    for (int k = 0; k < 4; ++k) {
      b.offset[k] = 0;
      b.weight[k] = b.d_w[k] = b.d_h[k] = acc_t(0);
    }
    return b;
  }
  // h, w >= -1 here, so truncation of (h + 1) is floor(h) + 1.
  const int64_t h_low = static_cast<int64_t>(h + acc_t(1)) - 1;
  const int64_t w_low = static_cast<int64_t>(w + acc_t(1)) - 1;
  const acc_t lh = h - static_cast<acc_t>(h_low);
  const acc_t lw = w - static_cast<acc_t>(w_low);
  const acc_t hh = acc_t(1) - lh;
  const acc_t hw = acc_t(1) - lw;
  const int64_t rows[4] = {h_low, h_low, h_low + 1, h_low + 1};
  const int64_t cols[4] = {w_low, w_low + 1, w_low, w_low + 1};
  const acc_t weight[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
  const acc_t d_w[4] = {-hh, hh, -lh, lh};
  const acc_t d_h[4] = {-hw, -lw, hw, lw};
  for (int k = 0; k < 4; ++k) {
    const bool inside = rows[k] >= 0 && rows[k] < height && cols[k] >= 0 && cols[k] < width;
    b.offset[k] = inside ? (rows[k] * width + cols[k]) * row_stride : 0;
    b.weight[k] = inside ? weight[k] : acc_t(0);
    b.d_w[k] = inside ? d_w[k] : acc_t(0);
    b.d_h[k] = inside ? d_h[k] : acc_t(0);
  }
  return b;
}

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
