// CPU kernels: forward parallel over (sample, head, query); backward parallel over (sample, head), so
// that every task owns its slice of grad_value and needs no atomics. Per-sample math: ms_deform_attn_math.h.
//
// Both kernels work one (sample, query, head) item at a time in two passes: first the bilinear corners
// of its L * P locations (offsets into value and weights, attention folded in for the forward; the
// corner rows are prefetched), then a gather over channels with nothing left to compute per channel
// but the four fused multiply-adds. For D = 32 (every published model) the channel count is a
// compile-time constant, so the accumulators stay in vector registers.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

// Hints the cache to fetch the next item's locations and attention weights (strided in memory when
// consecutive items share a head).
template <typename acc_t>
inline void prefetch_item(const acc_t* loc, const acc_t* attn, int64_t lp) {
  for (int64_t b = 0; b < 2 * lp * static_cast<int64_t>(sizeof(acc_t)); b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(loc) + b);
  }
  for (int64_t b = 0; b < lp * static_cast<int64_t>(sizeof(acc_t)); b += 64) {
    __builtin_prefetch(reinterpret_cast<const char*>(attn) + b);
  }
}

// The samples of one item that touch the map: element offsets of the four corners in value (level
// offset included) and their weights (times the attention weight in the forward).
template <typename acc_t>
struct ItemSamples {
  std::vector<int64_t> offset;  // (L * P, 4)
  std::vector<acc_t> weight;    // (L * P, 4)
  int64_t count = 0;
  explicit ItemSamples(int64_t lp) : offset(4 * lp), weight(4 * lp) {}
};

// Output items [begin, end) of the flattened (N, M, Lq): consecutive items share a head, so a thread
// samples one head's map at a time.
template <int64_t kChannels, typename scalar_t>
MSDA_MULTIVERSION void forward_items(const Args<scalar_t>& args, scalar_t* out, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t channels = channel_count<kChannels>(d);
  const int64_t lp = d.levels * d.points;
  ItemSamples<acc_t> samples(lp);
  std::vector<acc_t> acc_buffer(kVectorised<kChannels, scalar_t> ? 0 : channels);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t q = item % d.queries;
    const int64_t m = (item / d.queries) % d.heads;
    const int64_t n = item / (d.queries * d.heads);
    const int64_t im = (n * d.queries + q) * d.heads + m;  // index into (N, Lq, M)
    if (q + 1 < d.queries) prefetch_item(args.loc + 2 * (im + d.heads) * lp, args.attn + (im + d.heads) * lp, lp);
    samples.count = 0;
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
      const int64_t level_offset = args.strides.level(n, m, args.starts[l]);
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t j = im * lp + l * d.points + p;
        const auto corners =
            bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
        if (!corners.any) continue;
        const acc_t a = args.attn[j];
        for (int k = 0; k < 4; ++k) {
          samples.offset[4 * samples.count + k] = level_offset + corners.offset[k];
          samples.weight[4 * samples.count + k] = corners.weight[k] * a;
        }
        ++samples.count;
      }
    }
    scalar_t* out_im = out + im * channels;
    if constexpr (kVectorised<kChannels, scalar_t>) {
      using R = Row<acc_t, kChannels>;
      typename R::Vec acc[R::kVecs] = {};
      for (int64_t s = 0; s < samples.count; ++s) {
        const int64_t* o = &samples.offset[4 * s];
        const acc_t* w = &samples.weight[4 * s];
        for (int64_t i = 0; i < R::kVecs; ++i) {
          const int64_t c = i * R::kLanes;
          acc[i] += w[0] * R::load(args.value + o[0] + c) + w[1] * R::load(args.value + o[1] + c) +
                    w[2] * R::load(args.value + o[2] + c) + w[3] * R::load(args.value + o[3] + c);
        }
      }
      for (int64_t i = 0; i < R::kVecs; ++i) R::store(out_im + i * R::kLanes, acc[i]);
    } else {
      acc_t* acc = acc_buffer.data();
      std::fill(acc_buffer.begin(), acc_buffer.end(), acc_t(0));
      for (int64_t s = 0; s < samples.count; ++s) {
        const int64_t* o = &samples.offset[4 * s];
        const acc_t* w = &samples.weight[4 * s];
        const scalar_t *r0 = args.value + o[0], *r1 = args.value + o[1], *r2 = args.value + o[2],
                       *r3 = args.value + o[3];
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          acc[c] += w[0] * static_cast<acc_t>(r0[c]) + w[1] * static_cast<acc_t>(r1[c]) +
                    w[2] * static_cast<acc_t>(r2[c]) + w[3] * static_cast<acc_t>(r3[c]);
        }
      }
      for (int64_t c = 0; c < channels; ++c) out_im[c] = static_cast<scalar_t>(acc[c]);
    }
  }
}

// Gradients of the (sample, head) pairs [begin, end) of the flattened (N * M): each pair owns its
// slice of grad_value, so no two tasks write the same element, and each element receives its
// contributions in query order (deterministic).
template <int64_t kChannels, typename scalar_t>
MSDA_MULTIVERSION void backward_heads(const Args<scalar_t>& args, const scalar_t* grad_out,
                                      at::opmath_type<scalar_t>* grad_value,
                                      at::opmath_type<scalar_t>* grad_loc, at::opmath_type<scalar_t>* grad_attn,
                                      int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t channels = channel_count<kChannels>(d);
  const int64_t lp = d.levels * d.points;
  std::vector<acc_t> g_buffer(kChannels > 0 ? 0 : channels);
  acc_t g_fixed[kChannels > 0 ? kChannels : 1];
  acc_t* g = kChannels > 0 ? g_fixed : g_buffer.data();
  const scalar_t* value = args.value;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / d.heads, m = task % d.heads;
    for (int64_t q = 0; q < d.queries; ++q) {
      const int64_t im = (n * d.queries + q) * d.heads + m;
      for (int64_t c = 0; c < channels; ++c) g[c] = static_cast<acc_t>(grad_out[im * channels + c]);
      for (int64_t l = 0; l < d.levels; ++l) {
        const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
        const int64_t level_offset = args.strides.level(n, m, args.starts[l]);
        for (int64_t p = 0; p < d.points; ++p) {
          const int64_t j = im * lp + l * d.points + p;
          const auto b =
              bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
          if (!b.any) continue;  // gradients stay zero
          const acc_t a = args.attn[j];
          const scalar_t* row[4];
          for (int k = 0; k < 4; ++k) row[k] = value + level_offset + b.offset[k];
          acc_t grad_a = 0, grad_w = 0, grad_h = 0;
          if constexpr (kVectorised<kChannels, scalar_t>) {
            using R = Row<acc_t, kChannels>;
            typename R::Vec sum_a = {}, sum_w = {}, sum_h = {};
            for (int64_t i = 0; i < R::kVecs; ++i) {
              const int64_t c = i * R::kLanes;
              const typename R::Vec gi = R::load(g + c);
              const typename R::Vec v0 = R::load(row[0] + c), v1 = R::load(row[1] + c), v2 = R::load(row[2] + c),
                                    v3 = R::load(row[3] + c);
              sum_a += gi * (b.weight[0] * v0 + b.weight[1] * v1 + b.weight[2] * v2 + b.weight[3] * v3);
              sum_w += gi * (b.d_w[0] * v0 + b.d_w[1] * v1 + b.d_w[2] * v2 + b.d_w[3] * v3);
              sum_h += gi * (b.d_h[0] * v0 + b.d_h[1] * v1 + b.d_h[2] * v2 + b.d_h[3] * v3);
            }
            grad_a = R::sum(sum_a), grad_w = R::sum(sum_w), grad_h = R::sum(sum_h);
            for (int k = 0; k < 4; ++k) {
              if (b.weight[k] == acc_t(0)) continue;  // outside the map: nothing to add
              acc_t* target = grad_value + level_offset + b.offset[k];
              const acc_t wa = b.weight[k] * a;
              for (int64_t i = 0; i < R::kVecs; ++i) {
                const int64_t c = i * R::kLanes;
                R::store(target + c, R::load(target + c) + wa * R::load(g + c));
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
    at::parallel_for(0, d.batch * d.heads * d.queries, 64, [&](int64_t begin, int64_t end) {
      if (d.channels == kFixedChannels) {
        forward_items<kFixedChannels>(args, out_p, begin, end);
      } else {
        forward_items<0>(args, out_p, begin, end);
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
