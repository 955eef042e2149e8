// Per-sample math of multi-scale deformable attention, shared by the CPU and the CUDA kernels.
//
// Conventions (align_corners=False, zero padding, as F.grid_sample):
//   a normalized location (x, y) in [0, 1] maps to pixel coordinates w = x * W - 0.5, h = y * H - 0.5;
//   the four integer corners around (h, w) are blended bilinearly; corners outside the map read zero.
// A level of `value` for one (sample, head) is addressed through `base`: the element (row, col, c)
// lives at base[(row * W + col) * row_stride + c] with row_stride = M * D.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace msda {

// True when a level of `height` x `width` positions starting at `start` lies inside a value tensor of
// `spatial` positions (written so that no product can overflow, whatever the int64 inputs).
MSDA_HOST_DEVICE bool level_in_bounds(int64_t start, int64_t height, int64_t width, int64_t spatial) {
  return height > 0 && width > 0 && start >= 0 && start <= spatial && height <= (spatial - start) / width;
}

// The four bilinear corners of one sampling location, in the order
// (h_low, w_low), (h_low, w_high), (h_high, w_low), (h_high, w_high).
// For each corner: its element offset, its bilinear weight, and the derivatives of that weight with
// respect to the pixel coordinates w and h. A corner outside the map has offset 0 and all three
// coefficients 0, so every gather below is a branch-free linear combination of four loads.
template <typename acc_t>
struct Corners {
  int64_t offset[4];
  acc_t weight[4];
  acc_t d_w[4];
  acc_t d_h[4];
  bool any;  // false when no corner lies inside the map (nothing to sample, all gradients zero)
};

// Corners of the pixel coordinates (h, w) in a height x width map whose element (row, col) lives at
// (row * width + col) * row_stride. A corner outside the map has offset 0 and zero
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

// Corners of the normalized location (x, y) in [0, 1] (grid_sample, align_corners=False): the pixel
// coordinates h = y * height - 0.5, w = x * width - 0.5. Non-finite locations sample nothing.
template <typename acc_t>
MSDA_HOST_DEVICE Corners<acc_t> bilinear_corners(acc_t x, acc_t y, int64_t height, int64_t width,
                                                int64_t row_stride) {
  return pixel_corners<acc_t>(y * static_cast<acc_t>(height) - acc_t(0.5),
                              x * static_cast<acc_t>(width) - acc_t(0.5), height, width, row_stride);
}

// Bilinear value of channel c.
template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE acc_t bilinear_gather(const scalar_t* base, const Corners<acc_t>& b, int64_t c) {
  return b.weight[0] * static_cast<acc_t>(base[b.offset[0] + c]) +
         b.weight[1] * static_cast<acc_t>(base[b.offset[1] + c]) +
         b.weight[2] * static_cast<acc_t>(base[b.offset[2] + c]) +
         b.weight[3] * static_cast<acc_t>(base[b.offset[3] + c]);
}

// Value of channel c and its derivatives with respect to the pixel coordinates w and h.
template <typename acc_t>
struct SampleWithGrad {
  acc_t value, d_w, d_h;
};

template <typename scalar_t, typename acc_t>
MSDA_HOST_DEVICE SampleWithGrad<acc_t> bilinear_gather_with_grad(const scalar_t* base,
                                                               const Corners<acc_t>& b, int64_t c) {
  SampleWithGrad<acc_t> s{acc_t(0), acc_t(0), acc_t(0)};
  for (int k = 0; k < 4; ++k) {
    const acc_t v = static_cast<acc_t>(base[b.offset[k] + c]);
    s.value += b.weight[k] * v;
    s.d_w += b.d_w[k] * v;
    s.d_h += b.d_h[k] * v;
  }
  return s;
}

// Adds grad * weight_k into the four corners of channel c of a gradient map laid out like `base`.
// `add(index, amount)` performs the accumulation (atomic in the CUDA kernels; the CPU kernels add
// whole rows of channels themselves).
template <typename acc_t, typename Accumulate>
MSDA_HOST_DEVICE void bilinear_scatter(const Corners<acc_t>& b, int64_t c, acc_t grad, Accumulate& add) {
  for (int k = 0; k < 4; ++k) {
    if (b.weight[k] != acc_t(0)) {
      add(b.offset[k] + c, b.weight[k] * grad);
    }
  }
}

}  // namespace msda
