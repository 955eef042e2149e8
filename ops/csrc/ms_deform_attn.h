// Host-side pieces shared by the CPU and CUDA entry points: sizes, kernel arguments, argument checks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <utility>

#include "ms_deform_attn_math.h"

namespace msda {

struct Dims {
  int64_t batch, spatial, heads, channels, queries, levels, points;
};

// Element strides of `value` (and of the matching value-gradient buffer) per sample, head and spatial
// position; channels are always contiguous. (N, S, M, D) has strides (S*M*D, D, M*D); the CPU kernels
// work on a head-major copy (N, M, S, D) with strides (M*S*D, S*D, D), which keeps one head's map
// contiguous in memory while a thread samples it.
struct ValueStrides {
  int64_t batch, head, position;

  static ValueStrides position_major(const Dims& d) {
    return {d.spatial * d.heads * d.channels, d.channels, d.heads * d.channels};
  }
  static ValueStrides head_major(const Dims& d) {
    return {d.heads * d.spatial * d.channels, d.spatial * d.channels, d.channels};
  }
  // Offset of level l's first position for (sample n, head m).
  MSDA_HOST_DEVICE int64_t level(int64_t n, int64_t m, int64_t level_start) const {
    return n * batch + m * head + level_start * position;
  }
};

// Read-only inputs of a kernel (on the kernel's device; loc and attn contiguous). Values are stored in
// scalar_t (float16, bfloat16, float32 or float64); locations and weights arrive converted to the
// compute type acc_t (float32, or float64 for float64 values), so that sampling positions keep float32
// precision when the values are half or bfloat16 (mixed precision).
template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* value;  // laid out as `strides` says
  const int64_t* shapes;  // (L, 2) rows (H, W)
  const int64_t* starts;  // (L,)
  const acc_t* loc;       // (N, Lq, M, L, P, 2)
  const acc_t* attn;      // (N, Lq, M, L, P)
  Dims d;
  ValueStrides strides;
};

// The argument checks of both entry points. The Python front end validates more (ValueError, exact
// level table); these guard what the kernels rely on for memory safety, because torch.compile graphs
// and direct calls of torch.ops.deformbev* reach the kernels without the Python checks.
inline Dims check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                         const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                         const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_loc.sizes());
  TORCH_CHECK(attn_weight.dim() == 5, "ms_deform_attn: attention_weights must be (N, Lq, M, L, P), got ",
              attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be (L, 2), got ", spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1, "ms_deform_attn: level_start_index must be (L,), got ",
              level_start_index.sizes());
  const Dims d{value.size(0),        value.size(1),        value.size(2),       value.size(3),
               sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
  TORCH_CHECK(sampling_loc.size(0) == d.batch && sampling_loc.size(2) == d.heads,
              "ms_deform_attn: sampling_locations ", sampling_loc.sizes(), " does not match value ",
              value.sizes(), " in N or M");
  TORCH_CHECK(spatial_shapes.size(0) == d.levels && level_start_index.size(0) == d.levels,
              "ms_deform_attn: spatial_shapes ", spatial_shapes.sizes(), " and level_start_index ",
              level_start_index.sizes(), " must have the L = ", d.levels, " levels of sampling_locations");
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5), "ms_deform_attn: attention_weights ",
              attn_weight.sizes(), " does not match sampling_locations ", sampling_loc.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong, "ms_deform_attn: spatial_shapes must be int64, got ",
              spatial_shapes.scalar_type());
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64, got ", level_start_index.scalar_type());
  const auto dtype = value.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
              "ms_deform_attn: value must be float16, bfloat16, float32 or float64, got ", dtype);
  const auto compute = at::toOpMathType(dtype);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"sampling_locations", sampling_loc},
                                {"attention_weights", attn_weight}}) {
    TORCH_CHECK(at::isFloatingType(t.scalar_type()) && at::promoteTypes(t.scalar_type(), compute) == compute,
                "ms_deform_attn: ", name, " has dtype ", t.scalar_type(), ", which does not convert exactly to ",
                compute, ", the compute dtype of value (", dtype, ")");
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"spatial_shapes", spatial_shapes},
                                {"level_start_index", level_start_index},
                                {"sampling_locations", sampling_loc},
                                {"attention_weights", attn_weight}}) {
    TORCH_CHECK(t.device() == value.device(), "ms_deform_attn: ", name, " is on ", t.device(),
                " but value is on ", value.device());
  }
  return d;
}

// Every level must lie inside value's S positions: the kernels read value at start_l + (row * W + col)
// for row < H_l and col < W_l. `shapes` and `starts` must be CPU tensors.
inline void check_levels_on_host(const at::Tensor& shapes, const at::Tensor& starts, int64_t spatial) {
  const auto shapes_c = shapes.contiguous();
  const auto starts_c = starts.contiguous();
  const int64_t* shape = shapes_c.const_data_ptr<int64_t>();
  const int64_t* start = starts_c.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < starts_c.numel(); ++l) {
    TORCH_CHECK(level_in_bounds(start[l], shape[2 * l], shape[2 * l + 1], spatial),
                "ms_deform_attn: level ", l, " of spatial_shapes/level_start_index (H = ", shape[2 * l],
                ", W = ", shape[2 * l + 1], ", start = ", start[l],
                ") must have H, W > 0 and start + H * W <= S = ", spatial, " (value's positions)");
  }
}

inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const Dims& d) {
  TORCH_CHECK(grad_output.device() == value.device(), "ms_deform_attn_backward: grad_output is on ",
              grad_output.device(), " but value is on ", value.device());
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({d.batch, d.queries, d.heads * d.channels}),
              "ms_deform_attn_backward: grad_output must be (N, Lq, M * D) = (", d.batch, ", ", d.queries,
              ", ", d.heads * d.channels, "), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == value.scalar_type(), "ms_deform_attn_backward: grad_output has dtype ",
              grad_output.scalar_type(), " but value (and the output) has ", value.scalar_type());
}

}  // namespace msda
