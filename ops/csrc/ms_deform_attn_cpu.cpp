// CPU kernels: forward parallel over (sample, head, block of queries); backward parallel over (sample,
// head), so that every task owns its slice of grad_value and needs no atomics. Per-sample math:
// ms_deform_attn_math.h.
//
// Both kernels sample a level's map for all their queries before the next level's (see kQueryBlock),
// and per sample compute the four corners' offsets and weights once (attention folded in for the
// forward), then run over the channels with nothing left but fused multiply-adds. For D = 32 (every
// published model) and values in the compute type (float32, float64) the channel loops are written on
// whole vectors (Row) with a compile-time count, so a query's accumulators stay in registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "ms_deform_attn.h"
#include "ms_deform_attn_math.h"

namespace msda {
namespace {

// The hot loops are compiled twice, for AVX2+FMA and for the baseline ISA, and picked at load time.
#if defined(__x86_64__) && defined(__GNUC__)
#define MSDA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MSDA_MULTIVERSION
#endif

// Channel counts with a specialised kernel; any other count takes the runtime loop (kChannels = 0).
constexpr int64_t kFixedChannels = 32;

template <int64_t kChannels>
inline int64_t channel_count(const Dims& d) {
  return kChannels > 0 ? kChannels : d.channels;
}

// kChannels channels of T as 32-byte vectors (GCC vector extensions: AVX registers in the x86-64-v3
// clone, pairs of SSE registers in the default one); used where values are stored in the compute type.
template <typename T, int64_t kChannels>
struct Row {
  typedef T Vec __attribute__((vector_size(32)));
  static constexpr int64_t kLanes = 32 / sizeof(T);
  static constexpr int64_t kVecs = kChannels / kLanes;
  static_assert(kChannels % kLanes == 0, "the fixed channel count must fill whole vectors");

  static Vec load(const T* p) {
    Vec v;
    __builtin_memcpy(&v, p, sizeof(Vec));
    return v;
  }
  static void store(T* p, const Vec& v) { __builtin_memcpy(p, &v, sizeof(Vec)); }
  static T sum(const Vec& v) {
    T total = 0;
    for (int64_t i = 0; i < kLanes; ++i) total += v[i];
    return total;
  }
};

// Whether the vector kernels apply: a fixed channel count and values stored in the compute type.
template <int64_t kChannels, typename scalar_t>
constexpr bool kVectorised = kChannels > 0 && std::is_same_v<scalar_t, at::opmath_type<scalar_t>>;

// Hints the cache to fetch `count` elements from `p` on (the next query's locations or weights).
template <typename T>
inline void prefetch(const T* p, int64_t count) {
  for (int64_t b = 0; b < count * static_cast<int64_t>(sizeof(T)); b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + b);
  }
}

// Queries per forward task. A task samples its queries one level after the other, so that a level's
// rows of value (one level of one head: the encoder's levels 1 to 3 each fit a 512 KiB L2, level 0
// does not) are fetched from the last-level cache about once per task rather than once per sample;
// the task's accumulators (kQueryBlock x D in the compute type) stay in L2 meanwhile.
constexpr int64_t kQueryBlock = 1024;

// acc (D channels, compute type) += the P samples of level l of the query whose first sample is j0,
// each weighted by its attention weight. `base`: the level's first element in value for this
// (sample, head).
template <int64_t kChannels, typename scalar_t>
__attribute__((always_inline)) inline void gather_level(const Args<scalar_t>& args, int64_t j0, int64_t height,
                                                        int64_t width, const scalar_t* base,
                                                        at::opmath_type<scalar_t>* acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = channel_count<kChannels>(args.d);
  using R = Row<acc_t, kVectorised<kChannels, scalar_t> ? kChannels : 8>;
  typename R::Vec sum[R::kVecs];
  if constexpr (kVectorised<kChannels, scalar_t>) {
#pragma GCC unroll 16
    for (int64_t i = 0; i < R::kVecs; ++i) sum[i] = R::load(acc + i * R::kLanes);
  }
  for (int64_t p = 0; p < args.d.points; ++p) {
    const int64_t j = j0 + p;
    const auto b = bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width,
                                           args.strides.position);
    if (!b.any) continue;
    const acc_t a = args.attn[j];
    const acc_t w0 = b.weight[0] * a, w1 = b.weight[1] * a, w2 = b.weight[2] * a, w3 = b.weight[3] * a;
    const scalar_t *r0 = base + b.offset[0], *r1 = base + b.offset[1], *r2 = base + b.offset[2],
                   *r3 = base + b.offset[3];
    if constexpr (kVectorised<kChannels, scalar_t>) {
#pragma GCC unroll 16
      for (int64_t i = 0; i < R::kVecs; ++i) {
        const int64_t c = i * R::kLanes;
        sum[i] += w0 * R::load(r0 + c) + w1 * R::load(r1 + c) + w2 * R::load(r2 + c) + w3 * R::load(r3 + c);
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        acc[c] += w0 * static_cast<acc_t>(r0[c]) + w1 * static_cast<acc_t>(r1[c]) +
                  w2 * static_cast<acc_t>(r2[c]) + w3 * static_cast<acc_t>(r3[c]);
      }
    }
  }
  if constexpr (kVectorised<kChannels, scalar_t>) {
#pragma GCC unroll 16
    for (int64_t i = 0; i < R::kVecs; ++i) R::store(acc + i * R::kLanes, sum[i]);
  }
}

// Forward tasks [begin, end) of the flattened (N, M, ceil(Lq / kQueryBlock)): a task is a block of
// queries of one (sample, head), so consecutive tasks sample the same head's map.
template <int64_t kChannels, typename scalar_t>
MSDA_MULTIVERSION void forward_blocks(const Args<scalar_t>& args, scalar_t* out, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t channels = channel_count<kChannels>(d);
  const int64_t lp = d.levels * d.points;
  const int64_t blocks = (d.queries + kQueryBlock - 1) / kQueryBlock;
  std::vector<acc_t> acc(std::min(kQueryBlock, d.queries) * channels);
  for (int64_t task = begin; task < end; ++task) {
    const int64_t q_begin = task % blocks * kQueryBlock, q_end = std::min(q_begin + kQueryBlock, d.queries);
    const int64_t m = task / blocks % d.heads, n = task / (blocks * d.heads);
    std::fill(acc.begin(), acc.end(), acc_t(0));
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
      const scalar_t* base = args.value + args.strides.level(n, m, args.starts[l]);
      for (int64_t q = q_begin; q < q_end; ++q) {
        const int64_t j0 = ((n * d.queries + q) * d.heads + m) * lp + l * d.points;  // (N, Lq, M, L, P)
        prefetch(args.loc + 2 * (j0 + d.heads * lp), 2 * d.points);
        prefetch(args.attn + j0 + d.heads * lp, d.points);
        gather_level<kChannels>(args, j0, height, width, base, &acc[(q - q_begin) * channels]);
      }
    }
    for (int64_t q = q_begin; q < q_end; ++q) {
      scalar_t* out_q = out + ((n * d.queries + q) * d.heads + m) * channels;
      const acc_t* acc_q = &acc[(q - q_begin) * channels];
      for (int64_t c = 0; c < channels; ++c) out_q[c] = static_cast<scalar_t>(acc_q[c]);
    }
  }
}

// Gradients of the (sample, head) pairs [begin, end) of the flattened (N * M): each pair owns its
// slice of grad_value, so no two tasks write the same element. A pair is worked one level after the
// other (as the forward, for the cache); an element of grad_value belongs to one level, so it receives
// its contributions in the order of the queries and points (deterministic).
template <int64_t kChannels, typename scalar_t>
MSDA_MULTIVERSION void backward_heads(const Args<scalar_t>& args, const scalar_t* grad_out,
                                      at::opmath_type<scalar_t>* grad_value,
                                      at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn,
                                      int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t channels = channel_count<kChannels>(d);
  const int64_t lp = d.levels * d.points;
  std::vector<acc_t> g(channels);
  const scalar_t* value = args.value;
  using R = Row<acc_t, kVectorised<kChannels, scalar_t> ? kChannels : 8>;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / d.heads, m = task % d.heads;
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
      const int64_t level_offset = args.strides.level(n, m, args.starts[l]);
      for (int64_t q = 0; q < d.queries; ++q) {
        const int64_t im = (n * d.queries + q) * d.heads + m;
        const int64_t j0 = im * lp + l * d.points;
        prefetch(args.loc + 2 * (j0 + d.heads * lp), 2 * d.points);
        prefetch(args.attn + j0 + d.heads * lp, d.points);
        for (int64_t c = 0; c < channels; ++c) g[c] = static_cast<acc_t>(grad_out[im * channels + c]);
        typename R::Vec gv[R::kVecs];
        if constexpr (kVectorised<kChannels, scalar_t>) {
#pragma GCC unroll 16
          for (int64_t i = 0; i < R::kVecs; ++i) gv[i] = R::load(&g[i * R::kLanes]);
        }
        for (int64_t j = j0; j < j0 + d.points; ++j) {
          const auto b =
              bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
          if (!b.any) continue;  // gradients stay zero
          const acc_t a = args.attn[j];
          const scalar_t* row[4];
          for (int k = 0; k < 4; ++k) row[k] = value + level_offset + b.offset[k];
          acc_t grad_a = 0, grad_w = 0, grad_h = 0;
          if constexpr (kVectorised<kChannels, scalar_t>) {
            typename R::Vec sum_a = {}, sum_w = {}, sum_h = {};
#pragma GCC unroll 16
            for (int64_t i = 0; i < R::kVecs; ++i) {
              const int64_t c = i * R::kLanes;
              const typename R::Vec v0 = R::load(row[0] + c), v1 = R::load(row[1] + c), v2 = R::load(row[2] + c),
                                    v3 = R::load(row[3] + c);
              sum_a += gv[i] * (b.weight[0] * v0 + b.weight[1] * v1 + b.weight[2] * v2 + b.weight[3] * v3);
              sum_w += gv[i] * (b.d_w[0] * v0 + b.d_w[1] * v1 + b.d_w[2] * v2 + b.d_w[3] * v3);
              sum_h += gv[i] * (b.d_h[0] * v0 + b.d_h[1] * v1 + b.d_h[2] * v2 + b.d_h[3] * v3);
            }
            grad_a = R::sum(sum_a), grad_w = R::sum(sum_w), grad_h = R::sum(sum_h);
            for (int k = 0; k < 4; ++k) {
              if (b.weight[k] == acc_t(0)) continue;  // outside the map: nothing to add
              acc_t* target = grad_value + level_offset + b.offset[k];
              const acc_t wa = b.weight[k] * a;
#pragma GCC unroll 16
              for (int64_t i = 0; i < R::kVecs; ++i) {
                const int64_t c = i * R::kLanes;
                R::store(target + c, R::load(target + c) + wa * gv[i]);
              }
            }
          } else {
#pragma omp simd reduction(+ : grad_a, grad_w, grad_h)
            for (int64_t c = 0; c < channels; ++c) {
              const auto sample = bilinear_gather_with_grad(value + level_offset, b, c);
              grad_a += g[c] * sample.value;
              grad_w += g[c] * sample.d_w;
              grad_h += g[c] * sample.d_h;
            }
            for (int k = 0; k < 4; ++k) {
              if (b.weight[k] == acc_t(0)) continue;  // outside the map: nothing to add
              acc_t* target = grad_value + level_offset + b.offset[k];
              const acc_t wa = b.weight[k] * a;
#pragma omp simd
              for (int64_t c = 0; c < channels; ++c) target[c] += wa * g[c];
            }
          }
          grad_attn[j] = grad_a;
          grad_loc[2 * j] = a * grad_w * static_cast<acc_t>(width);
          grad_loc[2 * j + 1] = a * grad_h * static_cast<acc_t>(height);
        }
      }
    }
  }
}

// All inputs on the CPU, checked before anything is read.
Dims check_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
               const at::Tensor& sampling_loc, const at::Tensor& attn_weight) {
  const Dims d = check_inputs(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: the CPU kernels need CPU tensors, got value on ",
              value.device());
  check_levels_on_host(spatial_shapes, level_start_index, d.spatial);
  return d;
}

// Inputs of the CPU kernels. When the queries sample value densely (Lq * L * P >= S, e.g. the
// encoder) value is copied head-major, (N, M, S, D), so that a thread sampling one head reads a
// contiguous block (3x faster on random locations); sparse samplers (e.g. a 300-query decoder) read
// the (N, S, M, D) input in place rather than pay for the copy. Locations and weights are converted
// to the compute type (a no-op when they already have it).
struct CpuInputs {
  Dims d;
  bool head_major;
  at::Tensor value, shapes, starts, loc, attn;

  CpuInputs(const at::Tensor& value_in, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
            const at::Tensor& sampling_loc, const at::Tensor& attn_weight)
      : d(check_cpu(value_in, spatial_shapes, level_start_index, sampling_loc, attn_weight)),
        head_major(d.queries * d.levels * d.points >= d.spatial),
        value(head_major ? value_in.transpose(1, 2).contiguous() : value_in.contiguous()),
        shapes(spatial_shapes.contiguous()),
        starts(level_start_index.contiguous()),
        loc(sampling_loc.to(at::toOpMathType(value_in.scalar_type())).contiguous()),
        attn(attn_weight.to(at::toOpMathType(value_in.scalar_type())).contiguous()) {}

  template <typename scalar_t>
  Args<scalar_t> args() const {
    using acc_t = at::opmath_type<scalar_t>;
    return {value.const_data_ptr<scalar_t>(),
            shapes.const_data_ptr<int64_t>(),
            starts.const_data_ptr<int64_t>(),
            loc.const_data_ptr<acc_t>(),
            attn.const_data_ptr<acc_t>(),
            d,
            head_major ? ValueStrides::head_major(d) : ValueStrides::position_major(d)};
  }

  // A value-gradient result laid out like `value`, returned as (N, S, M, D) of `dtype`.
  at::Tensor to_input_layout(const at::Tensor& grad, at::ScalarType dtype) const {
    const auto cast = grad.to(dtype);
    return head_major ? cast.transpose(1, 2).contiguous() : cast;
  }
};

at::Tensor forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                       const at::Tensor& level_start_index, const at::Tensor& sampling_loc,
                       const at::Tensor& attn_weight) {
  const CpuInputs in(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const Dims& d = in.d;
  auto out = at::empty({d.batch, d.queries, d.heads * d.channels}, value.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_forward_cpu", [&] {
    const auto args = in.args<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (d.queries + kQueryBlock - 1) / kQueryBlock;
    at::parallel_for(0, d.batch * d.heads * blocks, 1, [&](int64_t begin, int64_t end) {
      if (d.channels == kFixedChannels) {
        forward_blocks<kFixedChannels>(args, out_p, begin, end);
      } else {
        forward_blocks<0>(args, out_p, begin, end);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_loc, const at::Tensor& attn_weight, const at::Tensor& grad_output) {
  const CpuInputs in(value, spatial_shapes, level_start_index, sampling_loc, attn_weight);
  const Dims& d = in.d;
  check_grad_output(grad_output, value, d);
  const auto grad_c = grad_output.contiguous();
  // Gradients accumulate in the compute type (value's in the layout of in.value) and are returned in
  // the dtype of their input.
  auto grad_value_acc = at::zeros(in.value.sizes(), in.loc.options());
  auto grad_loc = at::zeros_like(in.loc);
  auto grad_attn = at::zeros_like(in.attn);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "msda_backward_cpu", [&] {
    const auto args = in.args<scalar_t>();
    const scalar_t* grad_p = grad_c.const_data_ptr<scalar_t>();
    auto* grad_value_p = grad_value_acc.mutable_data_ptr<at::opmath_type<scalar_t>>();
    auto* grad_loc_p = grad_loc.mutable_data_ptr<at::opmath_type<scalar_t>>();
    auto* grad_attn_p = grad_attn.mutable_data_ptr<at::opmath_type<scalar_t>>();
    at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t begin, int64_t end) {
      if (d.channels == kFixedChannels) {
        backward_heads<kFixedChannels>(args, grad_p, grad_value_p, grad_loc_p, grad_attn_p, begin, end);
      } else {
        backward_heads<0>(args, grad_p, grad_value_p, grad_loc_p, grad_attn_p, begin, end);
      }
    });
  });
  return {in.to_input_layout(grad_value_acc, value.scalar_type()), grad_loc.to(sampling_loc.scalar_type()),
          grad_attn.to(attn_weight.scalar_type())};
}

}  // namespace
}  // namespace msda

TORCH_LIBRARY_IMPL(deformbev_native, CPU, m) {
  m.impl("ms_deform_attn_forward", &msda::forward_cpu);
  m.impl("ms_deform_attn_backward", &msda::backward_cpu);
}
