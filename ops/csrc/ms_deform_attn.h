// Host-side pieces shared by the CPU and CUDA entry points: sizes, kernel arguments, argument checks.
#pragma once

#include <ATen/ATen.h>

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

// Read-only inputs of a kernel (on the kernel's device; loc and attn contiguous).
template <typename scalar_t>
struct Args {
  const scalar_t* value;  // laid out as `strides` says
  const int64_t* shapes;  // (L, 2) rows (H, W)
  const int64_t* starts;  // (L,)
  const scalar_t* loc;    // (N, Lq, M, L, P, 2)
  const scalar_t* attn;   // (N, Lq, M, L, P)
  Dims d;
  ValueStrides strides;
};

// Checks what the kernels rely on (the Python front end validates more thoroughly with ValueError;
// these guard direct calls of torch.ops.deformbev_native.*).
inline Dims check_dims(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                       const at::Tensor& attn_weight) {
  TORCH_CHECK(value.dim() == 4, "value must be (N, S, M, D), got ", value.sizes());
  TORCH_CHECK(sampling_loc.dim() == 6 && sampling_loc.size(5) == 2,
              "sampling_locations must be (N, Lq, M, L, P, 2), got ", sampling_loc.sizes());
  TORCH_CHECK(attn_weight.dim() == 5, "attention_weights must be (N, Lq, M, L, P), got ",
              attn_weight.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 &&
                  spatial_shapes.scalar_type() == at::kLong,
              "spatial_shapes must be int64 (L, 2)");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.scalar_type() == at::kLong,
              "level_start_index must be int64 (L,)");
  const Dims d{value.size(0),        value.size(1),        value.size(2),       value.size(3),
               sampling_loc.size(1), sampling_loc.size(3), sampling_loc.size(4)};
  TORCH_CHECK(sampling_loc.size(0) == d.batch && sampling_loc.size(2) == d.heads &&
                  spatial_shapes.size(0) == d.levels && level_start_index.size(0) == d.levels,
              "sampling_locations ", sampling_loc.sizes(), " does not match value ", value.sizes(),
              " and spatial_shapes ", spatial_shapes.sizes());
  TORCH_CHECK(attn_weight.sizes() == sampling_loc.sizes().slice(0, 5),
              "attention_weights ", attn_weight.sizes(), " does not match sampling_locations ",
              sampling_loc.sizes());
  TORCH_CHECK(sampling_loc.scalar_type() == value.scalar_type() &&
                  attn_weight.scalar_type() == value.scalar_type(),
              "value, sampling_locations and attention_weights must share one dtype");
  return d;
}

}  // namespace msda
