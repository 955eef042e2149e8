// CUDA kernels. Work item = one (sample, query, head); a group of G lanes of a warp (G = the power of
// two >= D, at most 32) handles one item, its lanes striding over the D channels, so loads of a value
// row are coalesced. Backward reduces the location/weight gradients over the channels with warp
// shuffles inside the group and adds value gradients atomically (into a float buffer for half/bf16).
// Per-sample math: ms_deform_attn_math.h, shared with the CPU kernels. All offsets are int64.
//
// The level table (spatial_shapes, level_start_index) lives on the GPU: reading it on the host would
// cost a device synchronisation per call, so the kernels themselves skip a level that does not lie
// inside value (it contributes zero). The Python front end rejects such tables in eager mode.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "ms_deform_attn.h"
#include "ms_deform_attn_math.h"

namespace msda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;

struct Grouping {
  int group;         // lanes per item (power of two, <= 32)
  int64_t items;     // N * Lq * M
  int64_t blocks;
};

Grouping make_grouping(const Dims& d) {
  int group = 1;
  while (group < d.channels && group < kWarpSize) group *= 2;
  const int64_t items = d.batch * d.queries * d.heads;
  const int64_t threads = items * group;
  const int64_t blocks = (threads + kBlockThreads - 1) / kBlockThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "ms_deform_attn: N * Lq * M = ", items,
              " work items exceed one CUDA grid");
  return {group, items, blocks};
}

template <typename acc_t>
struct AtomicAdd {
  acc_t* target;
  __device__ void operator()(int64_t index, acc_t amount) { gpuAtomicAdd(target + index, amount); }
};

template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t>
__global__ void forward_kernel(const Args<scalar_t> args, scalar_t* __restrict__ out, int group,
                               int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t item = thread / group;  // ((n * Lq) + q) * M + m
  const int lane = static_cast<int>(thread % group);
  if (item >= items) return;  // no shuffles in the forward pass: early exit is safe
  const Dims& d = args.d;
  const int64_t m = item % d.heads;
  const int64_t n = item / (d.heads * d.queries);
  const int64_t lp = d.levels * d.points;
  for (int64_t c = lane; c < d.channels; c += group) {
    acc_t acc = 0;
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1], start = args.starts[l];
      if (!level_in_bounds(start, height, width, d.spatial)) continue;
      const scalar_t* base = args.value + args.strides.level(n, m, start);
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t j = item * lp + l * d.points + p;
        const auto corners =
            bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
        if (corners.any) acc += args.attn[j] * bilinear_gather(base, corners, c);
      }
    }
    out[item * d.channels + c] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const Args<scalar_t> args, const scalar_t* __restrict__ grad_out,
                                at::opmath_type<scalar_t>* grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_loc,
                                at::opmath_type<scalar_t>* __restrict__ grad_attn, int group, int64_t items) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool valid = thread / group < items;
  // Lanes past the end mirror the last item (reads only) so that every lane joins the shuffles.
  const int64_t item = valid ? thread / group : items - 1;
  const int lane = static_cast<int>(thread % group);
  const Dims& d = args.d;
  const int64_t m = item % d.heads;
  const int64_t n = item / (d.heads * d.queries);
  const int64_t lp = d.levels * d.points;
  for (int64_t l = 0; l < d.levels; ++l) {
    const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1], start = args.starts[l];
    if (!level_in_bounds(start, height, width, d.spatial)) continue;  // the same for every lane
    const int64_t level_offset = args.strides.level(n, m, start);
    const scalar_t* base = args.value + level_offset;
    AtomicAdd<acc_t> add{grad_value + level_offset};
    for (int64_t p = 0; p < d.points; ++p) {
      const int64_t j = item * lp + l * d.points + p;
      // Out-of-map corners have zero coefficients, so no branch is needed before the shuffles.
      const auto corners =
          bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
      const acc_t a = args.attn[j];
      acc_t grad_a = 0, grad_w = 0, grad_h = 0;
      for (int64_t c = lane; c < d.channels; c += group) {
        const acc_t g = static_cast<acc_t>(grad_out[item * d.channels + c]);
        const auto s = bilinear_gather_with_grad(base, corners, c);
        grad_a += g * s.value;
        grad_w += g * s.d_w;
        grad_h += g * s.d_h;
        if (valid) bilinear_scatter(corners, c, a * g, add);
      }
      grad_a = group_sum(grad_a, group);
      grad_w = group_sum(grad_w, group);
      grad_h = group_sum(grad_h, group);
      if (valid && lane == 0) {
        grad_attn[j] = grad_a;
        grad_loc[2 * j] = a * grad_w * static_cast<acc_t>(width);
        grad_loc[2 * j + 1] = a * grad_h * static_cast<acc_t>(height);
      }
    }
  }
}

// Contiguous inputs of the CUDA kernels, locations and weights in the compute type.
struct CudaInputs {
  Dims d;
  at::Tensor value, shapes, starts, loc, attn;

  CudaInputs(const at::Tensor& value_in, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
             const at::Tensor& sampling_loc, const at::Tensor& attn_weight)
      : d(check_inputs(value_in, spatial_shapes, level_start_index, sampling_loc, attn_weight)) {
    TORCH_CHECK(value_in.is_cuda(), "ms_deform_attn: the CUDA kernels need CUDA tensors, got value on ",
                value_in.device());
    const auto compute = at::toOpMathType(value_in.scalar_type());
    value = value_in.contiguous();
    shapes = spatial_shapes.contiguous();
    starts = level_start_index.contiguous();
    loc = sampling_loc.to(compute).contiguous();
    attn = attn_weight.to(compute).contiguous();
  }

  template <typename scalar_t>
  Args<scalar_t> args() const {
    using acc_t = at::opmath_type<scalar_t>;
    return {value.const_data_ptr<scalar_t>(), shapes.const_data_ptr<int64_t>(), starts.const_data_ptr<int64_t>(),
            loc.const_data_ptr<acc_t>(),      attn.const_data_ptr<acc_t>(),     d,
            ValueStrides::position_major(d)};
  }
};

at::Tensor forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                        const at::Tensor& attn_weight) {
  const CudaInputs in(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims& d = in.d;
  auto out = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  const Grouping g = make_grouping(d);
  if (g.items == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cuda", [&] {
    forward_kernel<scalar_t><<<g.blocks, kBlockThreads, 0, stream>>>(in.args<scalar_t>(),
                                                                      out.mutable_data_ptr<scalar_t>(), g.group, g.items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc, const at::Tensor& attn_weight, const at::Tensor& grad_output) {
  const CudaInputs in(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const c10::cuda::CUDAGuard guard(value.device());
  const Dims& d = in.d;
  check_grad_output(grad_output, value, d);
  // Value gradients are summed with atomic adds, in an order that varies from run to run.
  at::globalContext().alertNotDeterministic("ms_deform_attn_backward (CUDA)");
  const auto grad_c = grad_output.contiguous();
  // Gradients accumulate in the compute type and are returned in the dtype of their input.
  auto grad_value = at::zeros(value.sizes(), in.loc.options());
  auto grad_loc = at::zeros_like(in.loc);
  auto grad_attn = at::zeros_like(in.attn);
  const Grouping g = make_grouping(d);
  if (g.items > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t><<<g.blocks, kBlockThreads, 0, stream>>>(
          in.args<scalar_t>(), grad_c.const_data_ptr<scalar_t>(), grad_value.mutable_data_ptr<acc_t>(),
          grad_loc.mutable_data_ptr<acc_t>(), grad_attn.mutable_data_ptr<acc_t>(), g.group, g.items);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_value.to(value.scalar_type()), grad_loc.to(sampling_loc.scalar_type()),
          grad_attn.to(attn_weight.scalar_type())};
}

}  // namespace
}  // namespace msda

TORCH_LIBRARY_IMPL(deformbev_native, CUDA, m) {
  m.impl("ms_deform_attn_forward", &msda::forward_cuda);
  m.impl("ms_deform_attn_backward", &msda::backward_cuda);
}
