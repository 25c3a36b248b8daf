// CPU fast path of VTA's boundary sampler (worldmodels.ops.sampling.boundary_sample).
//
// Forward: per row, a sequential loop over the T steps carrying the number of
// segments so far and the length of the current one (the segment limits), with the
// elementwise Gumbel-sigmoid maths fused in; rows run in parallel with OpenMP.
// Backward: elementwise. Buffers are float32 NumPy arrays (C order); the GIL is
// released around the compute. With a seed, the uniform noise is Philox4x32-10 with
// the same counter layout as Triton's tl.rand(seed, i), so the C++ and Triton paths
// draw the same numbers for the same seed.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "array_checks.h"
#include "parallel.h"
#include "registry.h"

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace wm {
namespace {

using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using BoolArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;

// Must match worldmodels/ops/sampling.py.
constexpr float kUniformMin = 1e-20f;
constexpr float kUniformMax = 1.0f - 5.9604644775390625e-08f;  // 1 - 2^-24
constexpr float kConstrainedLogit = 6.906754778648554f;         // log(999)
// Work below which OpenMP's fork/join costs more than it saves (elements).
constexpr int64_t kParallelMin = 16384;

// Philox4x32-10, the first output word, as a float in [0, 1): Triton's tl.rand with
// counter (lo32(offset), hi32(offset), 0, 0) and key (lo32(seed), hi32(seed)).
inline float philox_uniform(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint64_t pa = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  int32_t x = static_cast<int32_t>(c0);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

// log1p(e) for e in [0, 1]: a series below 1e-3 (relative error < 1e-9), else log(1 + e)
// (cheaper than log1p, exact enough where 1 + e keeps e's leading bits).
inline float log1p_unit(float e) { return e < 1e-3f ? e * (1.0f - 0.5f * e) : std::log(1.0f + e); }

// log sigmoid(-c) and log sigmoid(c) = min(-+c, 0) - log1p(exp(-|c|)), one exp and log.
inline void log_sigmoid_pair(float c, float* out) {
  const float tail = log1p_unit(std::exp(-std::fabs(c)));
  out[0] = std::min(-c, 0.0f) - tail;
  out[1] = std::min(c, 0.0f) - tail;
}

// sigmoid(-x) and sigmoid(x) from one exp(-|x|).
inline void sigmoid_pair(float x, float* neg, float* pos) {
  const float e = std::exp(-std::fabs(x));
  const float big = 1.0f / (1.0f + e), small = e / (1.0f + e);
  *pos = x >= 0.0f ? big : small;
  *neg = x >= 0.0f ? small : big;
}

// x + log u - log(1 - u) with one log; 1 - u is exact for u >= 0.5 and within 2^-24
// relative below, so the result is within an ulp or two of the two-log form.
inline float logistic_shift(float x, float u) { return x + std::log(u / (1.0f - u)); }

struct ForwardArgs {
  const float* logits;
  const float* noise;  // nullptr: Philox with seed
  uint64_t seed;
  int64_t batch, steps;
  float beta;
  int64_t seg_len, seg_num;
  float *mask, *probs, *log_probs, *soft;
  bool* free;
};

// Pass 1 over a row, steps independent (pipelined, the Philox loop vectorisable): the
// logits plus logistic noise, written to `soft` as scratch.
void shift_row(const ForwardArgs& a, int64_t b) {
  const int64_t begin = b * a.steps, end = begin + a.steps;
  float* shifted = a.soft;
  if (a.noise == nullptr) {
    for (int64_t i = begin; i < end; ++i) shifted[i] = philox_uniform(a.seed, static_cast<uint64_t>(i));
  }
  const float* uniform = a.noise ? a.noise : shifted;
  for (int64_t i = begin; i < end; ++i) {
    const float u = std::min(std::max(uniform[i], kUniformMin), kUniformMax);
    shifted[i] = logistic_shift(a.logits[i], u);
  }
}

// Pass 2: the sequential scan of the segment limits, and the outputs.
void forward_row(const ForwardArgs& a, int64_t b) {
  shift_row(a, b);
  // log_probs of the steps the constraints fixed: [-inf-ish, 0] and [0, -inf-ish].
  float forced_lp[2], forbidden_lp[2];
  log_sigmoid_pair(kConstrainedLogit, forced_lp);
  log_sigmoid_pair(-kConstrainedLogit, forbidden_lp);
  int64_t count = 0, length = 0;
  for (int64_t t = 0; t < a.steps; ++t) {
    const int64_t i = b * a.steps + t;
    const float x = a.logits[i];
    const float shifted = a.soft[i];
    const bool forced = t == 0 || length >= a.seg_len;
    const bool forbidden = !forced && (a.seg_num - count) * a.seg_len < a.steps - t;
    const bool free = !forced && !forbidden;
    const bool boundary = forced || (free && shifted > 0.0f);
    const float hard = boundary ? 1.0f : 0.0f;
    const float soft = free ? sigmoid(shifted / a.beta) : hard;  // probs in float32
    a.mask[i] = std::isnan(x) ? x : hard;  // a NaN logit stays visible, as in the reference
    a.probs[i] = soft;
    if (free) {
      log_sigmoid_pair(x, a.log_probs + 2 * i);
    } else {
      const float* fixed = forced ? forced_lp : forbidden_lp;
      a.log_probs[2 * i] = fixed[0];
      a.log_probs[2 * i + 1] = fixed[1];
    }
    a.soft[i] = soft;
    a.free[i] = free;
    count += boundary;
    length = boundary ? 1 : length + 1;
  }
}

py::tuple boundary_forward(const F32Array& logits, const py::object& noise, uint64_t seed,
                           double beta, int64_t seg_len, int64_t seg_num, int num_threads) {
  if (logits.ndim() != 2) throw py::value_error("logits must be [B, T]");
  const int64_t batch = logits.shape(0), steps = logits.shape(1);
  if (steps < 1 || seg_len < 1 || seg_num < 1 || seg_len * seg_num < steps) {
    throw py::value_error("need T >= 1, seg_len >= 1, seg_num >= 1 and seg_len * seg_num >= T");
  }
  if (!(beta > 0.0)) throw py::value_error("beta must be > 0");
  F32Array noise_array;
  if (!noise.is_none()) {
    noise_array = noise.cast<F32Array>();
    check_shape(noise_array, "noise (like logits)", {batch, steps});
  }
  F32Array mask({batch, steps}), probs({batch, steps}), log_probs({batch, steps, int64_t{2}});
  F32Array soft({batch, steps});
  BoolArray free({batch, steps});
  ForwardArgs a{logits.data(), noise.is_none() ? nullptr : noise_array.data(), seed, batch,
                steps, static_cast<float>(beta), seg_len, seg_num, mask.mutable_data(),
                probs.mutable_data(), log_probs.mutable_data(), soft.mutable_data(),
                free.mutable_data()};
  {
    py::gil_scoped_release release;
    const int threads = threads_for(batch * steps, num_threads, kParallelMin);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t b = 0; b < batch; ++b) forward_row(a, b);
  }
  return py::make_tuple(mask, probs, log_probs, soft, free);
}

const float* optional_grad(const py::object& grad, F32Array& holder, const char* name,
                           int64_t numel) {
  if (grad.is_none()) return nullptr;
  holder = grad.cast<F32Array>();
  if (holder.size() != numel) throw py::value_error(std::string(name) + " has the wrong size");
  return holder.data();
}

F32Array boundary_backward(const py::object& grad_mask, const py::object& grad_probs,
                           const py::object& grad_log_probs, const F32Array& logits,
                           const F32Array& soft, const BoolArray& free, double beta,
                           int num_threads) {
  const int64_t n = logits.size();
  if (soft.size() != n || free.size() != n) {
    throw py::value_error("soft and free must match logits");
  }
  F32Array gm_holder, gp_holder, glp_holder;
  const float* gm = optional_grad(grad_mask, gm_holder, "grad_mask", n);
  const float* gp = optional_grad(grad_probs, gp_holder, "grad_probs", n);
  const float* glp = optional_grad(grad_log_probs, glp_holder, "grad_log_probs", 2 * n);
  std::vector<py::ssize_t> shape(logits.shape(), logits.shape() + logits.ndim());
  F32Array grad(shape);
  const float* x = logits.data();
  const float* sf = soft.data();
  const bool* fr = free.data();
  float* out = grad.mutable_data();
  const float bt = static_cast<float>(beta);
  {
    py::gil_scoped_release release;
    const int threads = threads_for(n, num_threads, kParallelMin);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < n; ++i) {
      if (!fr[i]) {
        out[i] = 0.0f;
        continue;
      }
      const float g = (gm ? gm[i] : 0.0f) + (gp ? gp[i] : 0.0f);
      float value = g * (1.0f - sf[i]) * sf[i] / bt;
      if (glp) {
        float neg, pos;
        sigmoid_pair(x[i], &neg, &pos);
        value += glp[2 * i + 1] * neg - glp[2 * i] * pos;
      }
      out[i] = value;
    }
  }
  return grad;
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("boundary_sample_forward", &boundary_forward, py::arg("logits"), py::arg("noise"),
        py::arg("seed"), py::arg("beta"), py::arg("seg_len"), py::arg("seg_num"),
        py::arg("num_threads") = 0,
        "VTA boundary sampler, forward. logits, noise (or None: Philox with seed): float32\n"
        "[B, T]. Returns (mask, probs [B, T], log_probs [B, T, 2], soft [B, T]: probs in\n"
        "float32, free [B, T] bool: no constraint applied there).");
  m.def("boundary_sample_backward", &boundary_backward, py::arg("grad_mask"),
        py::arg("grad_probs"), py::arg("grad_log_probs"), py::arg("logits"), py::arg("soft"),
        py::arg("free"), py::arg("beta"), py::arg("num_threads") = 0,
        "VTA boundary sampler, backward: grad_logits [B, T] float32 from the gradients of\n"
        "(mask, probs, log_probs) (each float32 or None) and the forward's soft and free.");
}

}  // namespace wm
