// CUDA kernels of DCNv2 (driver: deform_conv.h; per-sample math: deform_conv_math.h, shared with the
// CPU kernels). One thread per column element (channel, kernel point, position) for im2col and col2im,
// whose input gradients are added atomically (into a float buffer for half / bfloat16, so the backward
// pass is not deterministic); one thread per (deform group, kernel point, position) for the offset and
// mask gradients, which sum over the group's channels in float.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "deform_conv.h"
#include "deform_conv_math.h"

namespace dcn {
namespace {

constexpr int kBlockThreads = 256;
constexpr int64_t kColumnElements = int64_t{1} << 27;  // bounds the column buffer (512 MiB in float)

int64_t blocks_for(int64_t threads) { return (threads + kBlockThreads - 1) / kBlockThreads; }

// Decomposes a column index (c * K + k) * P + l of a chunk of P positions; `position` is the output
// position chunk_begin + l.
struct ColumnIndex {
  int64_t c, g, k, position;

  __device__ static ColumnIndex of(const ConvDims& d, Chunk chunk, int64_t index) {
    const int64_t l = index % chunk.size(), ck = index / chunk.size();
    const int64_t c = ck / d.kernel_points();
    return {c, c / d.channels_per_deform_group(), ck % d.kernel_points(), chunk.begin + l};
  }
};

template <typename scalar_t>
__global__ void im2col_kernel(const ConvDims d, const Chunk chunk, const scalar_t* __restrict__ input,
                              const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                              scalar_t* __restrict__ columns, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const ColumnIndex col = ColumnIndex::of(d, chunk, index);
  const auto corners = kernel_point_corners<acc_t>(d, offset, col.g, col.k, col.position);
  const acc_t v = corners.any ? msda::bilinear_gather(input + col.c * d.plane(), corners, 0) : acc_t(0);
  const acc_t m = static_cast<acc_t>(mask[(col.g * d.kernel_points() + col.k) * d.positions() + col.position]);
  columns[index] = static_cast<scalar_t>(m * v);
}

template <typename acc_t>
struct AtomicAdd {
  acc_t* target;
  __device__ void operator()(int64_t index, acc_t amount) { gpuAtomicAdd(target + index, amount); }
};

template <typename scalar_t>
__global__ void col2im_kernel(const ConvDims d, const Chunk chunk, const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, const scalar_t* __restrict__ grad_columns,
                              at::opmath_type<scalar_t>* grad_input, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const ColumnIndex col = ColumnIndex::of(d, chunk, index);
  const auto corners = kernel_point_corners<acc_t>(d, offset, col.g, col.k, col.position);
  if (!corners.any) return;
  const acc_t m = static_cast<acc_t>(mask[(col.g * d.kernel_points() + col.k) * d.positions() + col.position]);
  AtomicAdd<acc_t> add{grad_input + col.c * d.plane()};
  msda::bilinear_scatter(corners, 0, m * static_cast<acc_t>(grad_columns[index]), add);
}

template <typename scalar_t>
__global__ void offset_mask_kernel(const ConvDims d, const Chunk chunk, const scalar_t* __restrict__ input,
                                   const scalar_t* __restrict__ offset, const scalar_t* __restrict__ mask,
                                   const scalar_t* __restrict__ grad_columns, scalar_t* __restrict__ grad_offset,
                                   scalar_t* __restrict__ grad_mask, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // row * P + l
  if (index >= total) return;
  const int64_t k_points = d.kernel_points(), cg = d.channels_per_deform_group(), p = chunk.size();
  const int64_t row = index / p, l = index % p, position = chunk.begin + l;
  const int64_t g = row / k_points, k = row % k_points;
  const auto corners = kernel_point_corners<acc_t>(d, offset, g, k, position);
  acc_t grad_m = 0, grad_h = 0, grad_w = 0;
  if (corners.any) {
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      const auto s = msda::bilinear_gather_with_grad(input + c * d.plane(), corners, 0);
      const acc_t grad = static_cast<acc_t>(grad_columns[(c * k_points + k) * p + l]);
      grad_m += grad * s.value;
      grad_h += grad * s.d_h;
      grad_w += grad * s.d_w;
    }
  }
  const int64_t mask_at = row * d.positions() + position, dy_at = 2 * row * d.positions() + position;
  const acc_t m = static_cast<acc_t>(mask[mask_at]);
  grad_mask[mask_at] = static_cast<scalar_t>(grad_m);
  grad_offset[dy_at] = static_cast<scalar_t>(m * grad_h);
  grad_offset[dy_at + d.positions()] = static_cast<scalar_t>(m * grad_w);
}

void im2col_cuda(const ConvDims& d, Chunk chunk, const at::Tensor& input_n, const at::Tensor& offset_n,
                 const at::Tensor& mask_n, const at::Tensor& columns) {
  const int64_t total = columns.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_im2col_cuda", [&] {
    im2col_kernel<scalar_t><<<blocks_for(total), kBlockThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        d, chunk, input_n.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
        mask_n.const_data_ptr<scalar_t>(), columns.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void col2im_cuda(const ConvDims& d, Chunk chunk, const at::Tensor& offset_n, const at::Tensor& mask_n,
                 const at::Tensor& grad_columns, const at::Tensor& grad_input_n) {
  at::globalContext().alertNotDeterministic("deform_conv2d_backward (CUDA): input gradients use atomic adds");
  const int64_t total = grad_columns.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, offset_n.scalar_type(), "dcn_col2im_cuda", [&] {
    col2im_kernel<scalar_t><<<blocks_for(total), kBlockThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        d, chunk, offset_n.const_data_ptr<scalar_t>(), mask_n.const_data_ptr<scalar_t>(),
        grad_columns.const_data_ptr<scalar_t>(), grad_input_n.mutable_data_ptr<at::opmath_type<scalar_t>>(),
        total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void offset_mask_grads_cuda(const ConvDims& d, Chunk chunk, const at::Tensor& input_n, const at::Tensor& offset_n,
                            const at::Tensor& mask_n, const at::Tensor& grad_columns,
                            const at::Tensor& grad_offset_n, const at::Tensor& grad_mask_n) {
  const int64_t total = d.deform_groups * d.kernel_points() * chunk.size();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input_n.scalar_type(), "dcn_offset_mask_cuda", [&] {
    offset_mask_kernel<scalar_t><<<blocks_for(total), kBlockThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        d, chunk, input_n.const_data_ptr<scalar_t>(), offset_n.const_data_ptr<scalar_t>(),
        mask_n.const_data_ptr<scalar_t>(), grad_columns.const_data_ptr<scalar_t>(),
        grad_offset_n.mutable_data_ptr<scalar_t>(), grad_mask_n.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

constexpr SampleKernels kCudaKernels{kColumnElements, &im2col_cuda, &col2im_cuda, &offset_mask_grads_cuda};

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                        const at::Tensor& weight, const std::optional<at::Tensor>& bias, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                        int64_t groups, int64_t deform_groups) {
  TORCH_CHECK(input.is_cuda(), "input must be a CUDA tensor, got ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return forward(kCudaKernels, input, offset, mask, weight, bias, stride_h, stride_w, pad_h, pad_w, dilation_h,
                 dilation_w, groups, deform_groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, const at::Tensor& weight,
    const at::Tensor& grad_output, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t groups, int64_t deform_groups) {
  TORCH_CHECK(input.is_cuda(), "input must be a CUDA tensor, got ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return backward(kCudaKernels, input, offset, mask, weight, grad_output, stride_h, stride_w, pad_h, pad_w,
                  dilation_h, dilation_w, groups, deform_groups);
}

}  // namespace
}  // namespace dcn

TORCH_LIBRARY_IMPL(deformbev_native, CUDA, m) {
  m.impl("deform_conv2d_forward", &dcn::forward_cuda);
  m.impl("deform_conv2d_backward", &dcn::backward_cuda);
}
