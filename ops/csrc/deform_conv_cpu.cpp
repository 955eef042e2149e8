// CPU kernels of DCNv2 (driver: deform_conv.h). Per sample, the bilinear corners of every
// (deform group, kernel point, output position) are computed once into a table that all channels of the
// group reuse. im2col and the offset/mask gradients run in tasks of (kernel point, block of positions)
// that own their outputs; col2im runs per input channel, so each task owns its gradient plane: no
// atomics, and the result does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "deform_conv.h"
#include "deform_conv_math.h"

namespace dcn {
namespace {

// The hot loops are compiled for AVX2+FMA and for the baseline ISA, picked at load time.
#if defined(__x86_64__) && defined(__GNUC__)
#define DCN_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DCN_MULTIVERSION
#endif

constexpr int64_t kBlock = 128;  // output positions per task

// Items per chunk of at::parallel_for so that a chunk does at least ~32k samples of work: small
// convolutions run on the calling thread instead of waking the pool.
int64_t grain(int64_t work_per_item) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, work_per_item)); }

// One sample's corners (deform_conv_math.h) as structure-of-arrays: element (row * 4 + j) * L + l of
// each array is corner j of table row (g * K + k) at output position l. The channel loops below run over
// positions with unit stride, so they vectorize (AVX2 gathers). A corner outside the image has offset 0
// and zero coefficients, so every loop is branch-free.
template <typename acc_t>
struct CornerTable {
  int64_t positions;
  std::vector<int32_t> offset;
  std::vector<acc_t> weight, d_w, d_h;

  // Pointers to the four corners of one row.
  struct Row {
    const int32_t* offset[4];
    const acc_t *weight[4], *d_w[4], *d_h[4];
  };

  template <typename scalar_t>
  CornerTable(const ConvDims& d, const scalar_t* offset_n) : positions(d.positions()) {
    TORCH_CHECK(d.plane() <= INT32_MAX, "the CPU kernels need H * W < 2^31, got ", d.height, " x ", d.width);
    const int64_t k_points = d.kernel_points(), rows = d.deform_groups * k_points;
    const auto size = static_cast<size_t>(rows * 4 * positions);
    offset.resize(size);
    weight.resize(size);
    d_w.resize(size);
    d_h.resize(size);
    at::parallel_for(0, rows, grain(positions), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        for (int64_t l = 0; l < positions; ++l) {
          const auto b = kernel_point_corners<acc_t>(d, offset_n, row / k_points, row % k_points, l);
          for (int j = 0; j < 4; ++j) {
            const int64_t e = (row * 4 + j) * positions + l;
            offset[e] = static_cast<int32_t>(b.offset[j]);
            weight[e] = b.weight[j];
            d_w[e] = b.d_w[j];
            d_h[e] = b.d_h[j];
          }
        }
      }
    });
  }

  Row row(int64_t r) const {
    Row view;
    for (int j = 0; j < 4; ++j) {
      const int64_t e = (r * 4 + j) * positions;
      view.offset[j] = offset.data() + e;
      view.weight[j] = weight.data() + e;
      view.d_w[j] = d_w.data() + e;
      view.d_h[j] = d_h.data() + e;
    }
    return view;
  }
};

// A task is one table row (g * K + k) and one block of positions [l0, l1).
struct Task {
  int64_t row, g, k, l0, l1;

  static int64_t count(const ConvDims& d) {
    return d.deform_groups * d.kernel_points() * ((d.positions() + kBlock - 1) / kBlock);
  }
  static Task at(const ConvDims& d, int64_t index) {
    const int64_t blocks = (d.positions() + kBlock - 1) / kBlock;
    const int64_t row = index / blocks, l0 = (index % blocks) * kBlock;
    return {row, row / d.kernel_points(), row % d.kernel_points(), l0, std::min(l0 + kBlock, d.positions())};
  }
};

template <typename scalar_t, typename acc_t>
DCN_MULTIVERSION void im2col_tasks(const ConvDims& d, const CornerTable<acc_t>& table, const scalar_t* input,
                                   const scalar_t* mask, scalar_t* columns, int64_t begin, int64_t end) {
  const int64_t k_points = d.kernel_points(), positions = d.positions(), cg = d.channels_per_deform_group();
  for (int64_t index = begin; index < end; ++index) {
    const Task t = Task::at(d, index);
    const auto r = table.row(t.row);
    const scalar_t* m = mask + t.row * positions;
    for (int64_t c = t.g * cg; c < (t.g + 1) * cg; ++c) {
      const scalar_t* plane = input + c * d.plane();
      scalar_t* out = columns + (c * k_points + t.k) * positions;
      const int32_t *o0 = r.offset[0], *o1 = r.offset[1], *o2 = r.offset[2], *o3 = r.offset[3];
      const acc_t *w0 = r.weight[0], *w1 = r.weight[1], *w2 = r.weight[2], *w3 = r.weight[3];
#pragma omp simd
      for (int64_t l = t.l0; l < t.l1; ++l) {
        const acc_t v = w0[l] * static_cast<acc_t>(plane[o0[l]]) + w1[l] * static_cast<acc_t>(plane[o1[l]]) +
                        w2[l] * static_cast<acc_t>(plane[o2[l]]) + w3[l] * static_cast<acc_t>(plane[o3[l]]);
        out[l] = static_cast<scalar_t>(static_cast<acc_t>(m[l]) * v);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
DCN_MULTIVERSION void col2im_channels(const ConvDims& d, const CornerTable<acc_t>& table, const scalar_t* mask,
                                      const scalar_t* grad_columns, acc_t* grad_input, int64_t begin,
                                      int64_t end) {
  const int64_t k_points = d.kernel_points(), positions = d.positions(), cg = d.channels_per_deform_group();
  for (int64_t c = begin; c < end; ++c) {
    acc_t* target = grad_input + c * d.plane();
    for (int64_t k = 0; k < k_points; ++k) {
      const int64_t row = (c / cg) * k_points + k;
      const auto r = table.row(row);
      const scalar_t* m = mask + row * positions;
      const scalar_t* grad = grad_columns + (c * k_points + k) * positions;
      for (int64_t l = 0; l < positions; ++l) {
        const acc_t v = static_cast<acc_t>(m[l]) * static_cast<acc_t>(grad[l]);
        for (int j = 0; j < 4; ++j) target[r.offset[j][l]] += r.weight[j][l] * v;
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
DCN_MULTIVERSION void offset_mask_tasks(const ConvDims& d, const CornerTable<acc_t>& table, const scalar_t* input,
                                        const scalar_t* mask, const scalar_t* grad_columns,
                                        scalar_t* grad_offset, scalar_t* grad_mask, int64_t begin,
                                        int64_t end) {
  const int64_t k_points = d.kernel_points(), positions = d.positions(), cg = d.channels_per_deform_group();
  acc_t grad_m[kBlock], grad_h[kBlock], grad_w[kBlock];
  for (int64_t index = begin; index < end; ++index) {
    const Task t = Task::at(d, index);
    const auto r = table.row(t.row);
    std::fill(grad_m, grad_m + kBlock, acc_t(0));
    std::fill(grad_h, grad_h + kBlock, acc_t(0));
    std::fill(grad_w, grad_w + kBlock, acc_t(0));
    for (int64_t c = t.g * cg; c < (t.g + 1) * cg; ++c) {
      const scalar_t* plane = input + c * d.plane();
      const scalar_t* grad = grad_columns + (c * k_points + t.k) * positions;
#pragma omp simd
      for (int64_t l = t.l0; l < t.l1; ++l) {
        acc_t value = 0, slope_w = 0, slope_h = 0;
        for (int j = 0; j < 4; ++j) {
          const acc_t x = static_cast<acc_t>(plane[r.offset[j][l]]);
          value += r.weight[j][l] * x;
          slope_w += r.d_w[j][l] * x;
          slope_h += r.d_h[j][l] * x;
        }
        const acc_t g = static_cast<acc_t>(grad[l]);
        grad_m[l - t.l0] += g * value;
        grad_w[l - t.l0] += g * slope_w;
        grad_h[l - t.l0] += g * slope_h;
      }
    }
    const scalar_t* m = mask + t.row * positions;
    for (int64_t l = t.l0; l < t.l1; ++l) {
      const acc_t mask_l = static_cast<acc_t>(m[l]);
      grad_mask[t.row * positions + l] = static_cast<scalar_t>(grad_m[l - t.l0]);
      grad_offset[2 * t.row * positions + l] = static_cast<scalar_t>(mask_l * grad_h[l - t.l0]);
      grad_offset[(2 * t.row + 1) * positions + l] = static_cast<scalar_t>(mask_l * grad_w[l - t.l0]);
    }
  }
}

void im2col_cpu(const ConvDims& d, const at::Tensor& input_n, const at::Tensor& offset_n, const at::Tensor& mask_n,
                const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_im2col_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* input = input_n.const_data_ptr<scalar_t>();
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    scalar_t* out = columns.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, Task::count(d), grain(kBlock * d.channels_per_deform_group()), [&](int64_t begin, int64_t end) {
      im2col_tasks(d, table, input, mask, out, begin, end);
    });
  });
}

void col2im_cpu(const ConvDims& d, const at::Tensor& offset_n, const at::Tensor& mask_n,
                const at::Tensor& grad_columns, const at::Tensor& grad_input_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, offset_n.scalar_type(), "dcn_col2im_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    const scalar_t* grad = grad_columns.const_data_ptr<scalar_t>();
    acc_t* grad_input = grad_input_n.mutable_data_ptr<acc_t>();
    at::parallel_for(0, d.channels, grain(d.kernel_points() * d.positions()), [&](int64_t begin, int64_t end) {
      col2im_channels(d, table, mask, grad, grad_input, begin, end);
    });
  });
}

void offset_mask_grads_cpu(const ConvDims& d, const at::Tensor& input_n, const at::Tensor& offset_n,
                           const at::Tensor& mask_n, const at::Tensor& grad_columns, const at::Tensor& grad_offset_n,
                           const at::Tensor& grad_mask_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_offset_mask_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* input = input_n.const_data_ptr<scalar_t>();
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    const scalar_t* grad = grad_columns.const_data_ptr<scalar_t>();
    scalar_t* grad_offset = grad_offset_n.mutable_data_ptr<scalar_t>();
    scalar_t* grad_mask = grad_mask_n.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, Task::count(d), grain(kBlock * d.channels_per_deform_group()), [&](int64_t begin, int64_t end) {
      offset_mask_tasks(d, table, input, mask, grad, grad_offset, grad_mask, begin, end);
    });
  });
}

constexpr SampleKernels kCpuKernels{&im2col_cpu, &col2im_cpu, &offset_mask_grads_cpu};

void check_cpu(const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "the CPU kernels need CPU tensors, got ", input.device());
}

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                       const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride_h,
                       int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                       int64_t groups, int64_t deform_groups) {
  check_cpu(input);
  return forward(kCpuKernels, input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, groups, deform_groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, const at::Tensor& weight,
    const at::Tensor& grad_output, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t deform_groups) {
  check_cpu(input);
  return backward(kCpuKernels, input, offset, mask, weight, grad_output, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, groups, deform_groups);
}

}  // namespace
}  // namespace dcn

TORCH_LIBRARY_IMPL(deformbev_native, CPU, m) {
  m.impl("deform_conv2d_forward", &dcn::forward_cpu);
  m.impl("deform_conv2d_backward", &dcn::backward_cpu);
}
