// CPU kernels: forward parallel over (sample, head, query); backward parallel over (sample, head), so
// that every task owns its slice of grad_value and needs no atomics. Per-sample math: ms_deform_attn_math.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

// Output items [begin, end) of the flattened (N, M, Lq): consecutive items share a head, so a thread
// samples one head's map at a time.
template <typename scalar_t>
MSDA_MULTIVERSION void forward_items(const Args<scalar_t>& args, scalar_t* out, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t lp = d.levels * d.points;
  std::vector<acc_t> acc(d.channels);
  acc_t* acc_p = acc.data();
  for (int64_t item = begin; item < end; ++item) {
    const int64_t q = item % d.queries;
    const int64_t m = (item / d.queries) % d.heads;
    const int64_t n = item / (d.queries * d.heads);
    const int64_t im = (n * d.queries + q) * d.heads + m;  // index into (N, Lq, M)
    std::fill(acc.begin(), acc.end(), acc_t(0));
    for (int64_t l = 0; l < d.levels; ++l) {
      const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
      const scalar_t* base = args.value + args.strides.level(n, m, args.starts[l]);
      for (int64_t p = 0; p < d.points; ++p) {
        const int64_t j = im * lp + l * d.points + p;
        auto corners =
            bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
        if (!corners.any) continue;
        const acc_t a = args.attn[j];
        for (int k = 0; k < 4; ++k) corners.weight[k] *= a;
#pragma omp simd
        for (int64_t c = 0; c < d.channels; ++c) {
          acc_p[c] += bilinear_gather(base, corners, c);
        }
      }
    }
    scalar_t* out_im = out + im * d.channels;
    for (int64_t c = 0; c < d.channels; ++c) out_im[c] = static_cast<scalar_t>(acc_p[c]);
  }
}

template <typename acc_t>
struct PlainAdd {
  acc_t* target;
  void operator()(int64_t index, acc_t amount) { target[index] += amount; }
};

// Gradients of the (sample, head) pairs [begin, end) of the flattened (N * M): each pair owns its
// slice of grad_value, so no two tasks write the same element.
template <typename scalar_t>
MSDA_MULTIVERSION void backward_heads(const Args<scalar_t>& args, const scalar_t* grad_out,
                                      at::opmath_type<scalar_t>* grad_value, at::opmath_type<scalar_t>* grad_loc,
                                      at::opmath_type<scalar_t>* grad_attn, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const Dims& d = args.d;
  const int64_t lp = d.levels * d.points;
  std::vector<acc_t> g(d.channels);
  const acc_t* g_p = g.data();
  for (int64_t task = begin; task < end; ++task) {
    const int64_t n = task / d.heads, m = task % d.heads;
    for (int64_t q = 0; q < d.queries; ++q) {
      const int64_t im = (n * d.queries + q) * d.heads + m;
      for (int64_t c = 0; c < d.channels; ++c) g[c] = static_cast<acc_t>(grad_out[im * d.channels + c]);
      for (int64_t l = 0; l < d.levels; ++l) {
        const int64_t height = args.shapes[2 * l], width = args.shapes[2 * l + 1];
        const int64_t level_offset = args.strides.level(n, m, args.starts[l]);
        const scalar_t* base = args.value + level_offset;
        PlainAdd<acc_t> add{grad_value + level_offset};
        for (int64_t p = 0; p < d.points; ++p) {
          const int64_t j = im * lp + l * d.points + p;
          const auto corners =
              bilinear_corners<acc_t>(args.loc[2 * j], args.loc[2 * j + 1], height, width, args.strides.position);
          if (!corners.any) continue;  // gradients stay zero
          const acc_t a = args.attn[j];
          acc_t grad_a = 0, grad_w = 0, grad_h = 0;
#pragma omp simd reduction(+ : grad_a, grad_w, grad_h)
          for (int64_t c = 0; c < d.channels; ++c) {
            const auto s = bilinear_gather_with_grad(base, corners, c);
            grad_a += g_p[c] * s.value;
            grad_w += g_p[c] * s.d_w;
            grad_h += g_p[c] * s.d_h;
          }
#pragma omp simd
          for (int64_t c = 0; c < d.channels; ++c) {
            bilinear_scatter(corners, c, a * g_p[c], add);
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
      forward_items(args, out_p, begin, end);
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
      backward_heads(args, grad_p, grad_value_p, grad_loc_p, grad_attn_p, begin, end);
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
