// CPU kernels of DCNv2 (driver: deform_conv.h). Per chunk of output positions, the bilinear corners of
// every (deform group, kernel point, position) are computed once into a table that all channels of the
// group reuse. im2col and the offset/mask gradients run in tasks of (kernel point, block of positions)
// that own their outputs; col2im runs over groups of input channels, so each task owns its gradient
// planes: no atomics, and the result does not depend on the number of threads.
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

constexpr int64_t kColumnElements = int64_t{1} << 22;  // a column chunk of 4 MiB in float: stays in cache
constexpr int64_t kBlock = 64;                          // output positions per task
constexpr int64_t kChannelGroup = 16;                   // input channels per col2im task

// Items per chunk of at::parallel_for so that a chunk does at least ~32k samples of work: small
// convolutions run on the calling thread instead of waking the pool.
int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, work_per_item));
}

// The corners (deform_conv_math.h) of a chunk as structure-of-arrays: element (row * 4 + j) * P + l of
// each array is corner j of table row g * K + k at the chunk's position l (P positions). The channel
// loops below run over positions with unit stride and vectorize; a corner outside the image has offset
// 0 and zero coefficients, so the loops are branch-free.
template <typename acc_t>
struct CornerTable {
  int64_t positions;
  std::vector<int32_t> offset;
  std::vector<acc_t> weight, d_w, d_h;

  struct Row {  // the four corners of one row
    const int32_t* offset[4];
    const acc_t *weight[4], *d_w[4], *d_h[4];
  };

  template <typename scalar_t>
  CornerTable(const ConvDims& d, Chunk chunk, const scalar_t* offset_n) : positions(chunk.size()) {
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
          const auto b =
              kernel_point_corners<acc_t>(d, offset_n, row / k_points, row % k_points, chunk.begin + l);
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

// A task is one table row g * K + k and one block [l0, l1) of the chunk's positions. Consecutive tasks
// share the block, so the kernel points of one block read the same input rows while they are cached.
struct Task {
  int64_t row, g, k, l0, l1;

  static int64_t count(const ConvDims& d, Chunk chunk) {
    return d.deform_groups * d.kernel_points() * ((chunk.size() + kBlock - 1) / kBlock);
  }
  static Task at(const ConvDims& d, Chunk chunk, int64_t index) {
    const int64_t rows = d.deform_groups * d.kernel_points();
    const int64_t row = index % rows, l0 = (index / rows) * kBlock;
    return {row, row / d.kernel_points(), row % d.kernel_points(), l0, std::min(l0 + kBlock, chunk.size())};
  }
};

template <typename scalar_t, typename acc_t>
DCN_MULTIVERSION void im2col_tasks(const ConvDims& d, Chunk chunk, const CornerTable<acc_t>& table,
                                   const scalar_t* input, const scalar_t* mask, scalar_t* columns, int64_t begin,
                                   int64_t end) {
  const int64_t k_points = d.kernel_points(), cg = d.channels_per_deform_group(), p = chunk.size();
  for (int64_t index = begin; index < end; ++index) {
    const Task t = Task::at(d, chunk, index);
    const auto r = table.row(t.row);
    const int32_t *o0 = r.offset[0], *o1 = r.offset[1], *o2 = r.offset[2], *o3 = r.offset[3];
    const acc_t *w0 = r.weight[0], *w1 = r.weight[1], *w2 = r.weight[2], *w3 = r.weight[3];
    const scalar_t* m = mask + t.row * d.positions() + chunk.begin;
    for (int64_t c = t.g * cg; c < (t.g + 1) * cg; ++c) {
      const scalar_t* plane = input + c * d.plane();
      scalar_t* out = columns + (c * k_points + t.k) * p;
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
DCN_MULTIVERSION void col2im_channel_groups(const ConvDims& d, Chunk chunk, const CornerTable<acc_t>& table,
                                            const scalar_t* mask, const scalar_t* grad_columns, acc_t* grad_input,
                                            int64_t begin, int64_t end) {
  const int64_t k_points = d.kernel_points(), cg = d.channels_per_deform_group(), p = chunk.size();
  for (int64_t group = begin; group < end; ++group) {
    const int64_t c0 = group * kChannelGroup, c1 = std::min(c0 + kChannelGroup, d.channels);
    for (int64_t k = 0; k < k_points; ++k) {
      for (int64_t l0 = 0; l0 < p; l0 += kBlock) {  // one block of the table serves all channels of the group
        const int64_t l1 = std::min(l0 + kBlock, p);
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t row = (c / cg) * k_points + k;
          const auto r = table.row(row);
          const scalar_t* m = mask + row * d.positions() + chunk.begin;
          const scalar_t* grad = grad_columns + (c * k_points + k) * p;
          acc_t* target = grad_input + c * d.plane();
          for (int64_t l = l0; l < l1; ++l) {
            const acc_t v = static_cast<acc_t>(m[l]) * static_cast<acc_t>(grad[l]);
            for (int j = 0; j < 4; ++j) target[r.offset[j][l]] += r.weight[j][l] * v;
          }
        }
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
DCN_MULTIVERSION void offset_mask_tasks(const ConvDims& d, Chunk chunk, const CornerTable<acc_t>& table,
                                        const scalar_t* input, const scalar_t* mask, const scalar_t* grad_columns,
                                        scalar_t* grad_offset, scalar_t* grad_mask, int64_t begin, int64_t end) {
  const int64_t k_points = d.kernel_points(), cg = d.channels_per_deform_group(), p = chunk.size();
  acc_t grad_m[kBlock], grad_w[kBlock], grad_h[kBlock];
  for (int64_t index = begin; index < end; ++index) {
    const Task t = Task::at(d, chunk, index);
    const auto r = table.row(t.row);
    const int32_t *o0 = r.offset[0], *o1 = r.offset[1], *o2 = r.offset[2], *o3 = r.offset[3];
    const acc_t *w0 = r.weight[0], *w1 = r.weight[1], *w2 = r.weight[2], *w3 = r.weight[3];
    const acc_t *dw0 = r.d_w[0], *dw1 = r.d_w[1], *dw2 = r.d_w[2], *dw3 = r.d_w[3];
    const acc_t *dh0 = r.d_h[0], *dh1 = r.d_h[1], *dh2 = r.d_h[2], *dh3 = r.d_h[3];
    std::fill(grad_m, grad_m + kBlock, acc_t(0));
    std::fill(grad_w, grad_w + kBlock, acc_t(0));
    std::fill(grad_h, grad_h + kBlock, acc_t(0));
    for (int64_t c = t.g * cg; c < (t.g + 1) * cg; ++c) {
      const scalar_t* plane = input + c * d.plane();
      const scalar_t* grad = grad_columns + (c * k_points + t.k) * p;
#pragma omp simd
      for (int64_t l = t.l0; l < t.l1; ++l) {
        const acc_t x0 = static_cast<acc_t>(plane[o0[l]]), x1 = static_cast<acc_t>(plane[o1[l]]);
        const acc_t x2 = static_cast<acc_t>(plane[o2[l]]), x3 = static_cast<acc_t>(plane[o3[l]]);
        const acc_t g = static_cast<acc_t>(grad[l]);
        grad_m[l - t.l0] += g * (w0[l] * x0 + w1[l] * x1 + w2[l] * x2 + w3[l] * x3);
        grad_w[l - t.l0] += g * (dw0[l] * x0 + dw1[l] * x1 + dw2[l] * x2 + dw3[l] * x3);
        grad_h[l - t.l0] += g * (dh0[l] * x0 + dh1[l] * x1 + dh2[l] * x2 + dh3[l] * x3);
      }
    }
    const int64_t mask_at = t.row * d.positions() + chunk.begin, dy_at = 2 * t.row * d.positions() + chunk.begin;
    const int64_t dx_at = dy_at + d.positions();
    for (int64_t l = t.l0; l < t.l1; ++l) {
      const acc_t m = static_cast<acc_t>(mask[mask_at + l]);
      grad_mask[mask_at + l] = static_cast<scalar_t>(grad_m[l - t.l0]);
      grad_offset[dy_at + l] = static_cast<scalar_t>(m * grad_h[l - t.l0]);
      grad_offset[dx_at + l] = static_cast<scalar_t>(m * grad_w[l - t.l0]);
    }
  }
}

void im2col_cpu(const ConvDims& d, Chunk chunk, const at::Tensor& input_n, const at::Tensor& offset_n,
                const at::Tensor& mask_n, const at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_im2col_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, chunk, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* input = input_n.const_data_ptr<scalar_t>();
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    scalar_t* out = columns.mutable_data_ptr<scalar_t>();
    const int64_t work = kBlock * d.channels_per_deform_group();
    at::parallel_for(0, Task::count(d, chunk), grain(work), [&](int64_t begin, int64_t end) {
      im2col_tasks(d, chunk, table, input, mask, out, begin, end);
    });
  });
}

void col2im_cpu(const ConvDims& d, Chunk chunk, const at::Tensor& offset_n, const at::Tensor& mask_n,
                const at::Tensor& grad_columns, const at::Tensor& grad_input_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, offset_n.scalar_type(), "dcn_col2im_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, chunk, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    const scalar_t* grad = grad_columns.const_data_ptr<scalar_t>();
    acc_t* grad_input = grad_input_n.mutable_data_ptr<acc_t>();
    const int64_t groups = (d.channels + kChannelGroup - 1) / kChannelGroup;
    const int64_t work = kChannelGroup * d.kernel_points() * chunk.size();
    at::parallel_for(0, groups, grain(work), [&](int64_t begin, int64_t end) {
      col2im_channel_groups(d, chunk, table, mask, grad, grad_input, begin, end);
    });
  });
}

void offset_mask_grads_cpu(const ConvDims& d, Chunk chunk, const at::Tensor& input_n, const at::Tensor& offset_n,
                           const at::Tensor& mask_n, const at::Tensor& grad_columns,
                           const at::Tensor& grad_offset_n, const at::Tensor& grad_mask_n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_offset_mask_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const CornerTable<acc_t> table(d, chunk, offset_n.const_data_ptr<scalar_t>());
    const scalar_t* input = input_n.const_data_ptr<scalar_t>();
    const scalar_t* mask = mask_n.const_data_ptr<scalar_t>();
    const scalar_t* grad = grad_columns.const_data_ptr<scalar_t>();
    scalar_t* grad_offset = grad_offset_n.mutable_data_ptr<scalar_t>();
    scalar_t* grad_mask = grad_mask_n.mutable_data_ptr<scalar_t>();
    const int64_t work = kBlock * d.channels_per_deform_group();
    at::parallel_for(0, Task::count(d, chunk), grain(work), [&](int64_t begin, int64_t end) {
      offset_mask_tasks(d, chunk, table, input, mask, grad, grad_offset, grad_mask, begin, end);
    });
  });
}

constexpr SampleKernels kCpuKernels{kColumnElements, &im2col_cpu, &col2im_cpu, &offset_mask_grads_cpu};

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
