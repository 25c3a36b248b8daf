// Per-row maths of the GRU scans on the CPU: gate activations forward and backward,
// and LayerNorm over one row, for one batch row (classic cell) or one (batch row,
// group) pair (block-diagonal cell). The GEMMs stay in PyTorch (MKL/oneDNN); these
// loops replace the dozen small elementwise ops (and their autograd nodes) per step.
//
// Loops are written so that GCC auto-vectorises them: no calls to libm inside the
// hot loops for float (a branch-free exp with a degree-6 polynomial; max relative
// error ~2 ulp), and reductions with eight independent partial sums.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace wm {
namespace gru {

// ---------------------------------------------------------------- activations

// exp(x) for float: x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6 Taylor
// polynomial, 2^k by building the exponent bits. Finite inputs are clamped to the
// range where the result is a finite normal float; exp(+inf) = +inf, exp(-inf) = 0
// and exp(NaN) = NaN, as std::exp, so that non-finite values propagate through the
// gates exactly as in the PyTorch reference (sigmoid(-inf) = 0, then 0 * inf = NaN).
inline float exp_fast(float x_in) {
  const float inf = std::numeric_limits<float>::infinity();
  float x = x_in < -87.0f ? -87.0f : x_in;
  x = x > 88.0f ? 88.0f : x;
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float k = (x * 1.44269504088896341f + shift) - shift;
  float r = x - k * 0.693145751953125f;  // ln2 split in two for exactness
  r = r - k * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale;
  y = x_in == inf ? inf : y;
  y = x_in == -inf ? 0.0f : y;
  return x_in != x_in ? x_in : y;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
// tanh(x) = 2 sigmoid(2x) - 1: absolute error ~1e-7, no cancellation issue at the
// tolerances the float path is held to.
inline float tanh_act(float x) { return 2.0f / (1.0f + exp_fast(-2.0f * x)) - 1.0f; }

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_act(double x) { return std::tanh(x); }

// ---------------------------------------------------------------- reductions

template <typename S>
inline S row_sum(const S* a, int64_t n) {
  S part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) part[l] += a[j + l];
  }
  S total = 0;
  for (; j < n; ++j) total += a[j];
  for (int l = 0; l < 8; ++l) total += part[l];
  return total;
}

template <typename S>
inline S row_dot(const S* a, const S* b, int64_t n) {
  S part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) part[l] += a[j + l] * b[j + l];
  }
  S total = 0;
  for (; j < n; ++j) total += a[j] * b[j];
  for (int l = 0; l < 8; ++l) total += part[l];
  return total;
}

// ---------------------------------------------------------------- LayerNorm

// LayerNorm over one row of n values: xhat = (x - mean) * rstd with the biased
// variance (as F.layer_norm), out = xhat * w + b. Writes xhat (kept for backward)
// and out; returns rstd = 1 / sqrt(var + eps).
template <typename S>
inline S layer_norm_row(const S* x, int64_t n, S eps, const S* w, const S* b, S* xhat, S* out) {
  const S mean = row_sum(x, n) / static_cast<S>(n);
  for (int64_t j = 0; j < n; ++j) xhat[j] = x[j] - mean;
  const S var = row_dot(xhat, xhat, n) / static_cast<S>(n);
  const S rstd = S(1) / std::sqrt(var + eps);
  for (int64_t j = 0; j < n; ++j) {
    xhat[j] *= rstd;
    out[j] = xhat[j] * w[j] + b[j];
  }
  return rstd;
}

// Backward of layer_norm_row for the input: with g = dy * w,
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). `scratch` holds n values.
template <typename S>
inline void layer_norm_row_backward(const S* dy, const S* xhat, const S* w, S rstd, int64_t n,
                                    S* scratch, S* dx) {
  for (int64_t j = 0; j < n; ++j) scratch[j] = dy[j] * w[j];
  const S inv_n = S(1) / static_cast<S>(n);
  const S m1 = row_sum(scratch, n) * inv_n;
  const S m2 = row_dot(scratch, xhat, n) * inv_n;
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (scratch[j] - m1 - xhat[j] * m2);
}

// ---------------------------------------------------------------- classic cell

// Forward gates of one classic row: gi, gh are the (normalised) projections
// [3H] = r | z | n, hp the previous state [H]. Writes the next state, the gate
// activations [3H] = r | z | n, and gh_n [H] (the value r multiplies).
template <typename S>
inline void classic_gates_forward(const S* __restrict gi, const S* __restrict gh, const S* __restrict hp, int64_t H, S* __restrict h_out,
                                  S* __restrict gates, S* __restrict ghn) {
  for (int64_t j = 0; j < H; ++j) {
    const S r = sigmoid(gi[j] + gh[j]);
    const S z = sigmoid(gi[H + j] + gh[H + j]);
    const S hn = gh[2 * H + j];
    const S n = tanh_act(gi[2 * H + j] + r * hn);
    h_out[j] = (S(1) - z) * n + z * hp[j];
    gates[j] = r;
    gates[H + j] = z;
    gates[2 * H + j] = n;
    ghn[j] = hn;
  }
}

// Backward gates of one classic row. dh is the total gradient of this step's state;
// writes the gradient to the previous state through the (1 - z) / z mix (carry),
// and the gradients of the normalised projections: dgi [3H] and dgh [3H].
template <typename S>
inline void classic_gates_backward(const S* __restrict dh, const S* __restrict gates, const S* __restrict ghn, const S* __restrict hp, int64_t H,
                                   S* __restrict carry, S* __restrict dgi, S* __restrict dgh) {
  for (int64_t j = 0; j < H; ++j) {
    const S r = gates[j], z = gates[H + j], n = gates[2 * H + j];
    const S dn = dh[j] * (S(1) - z);
    const S dz = dh[j] * (hp[j] - n);
    carry[j] = dh[j] * z;
    const S dan = dn * (S(1) - n * n);
    const S dar = dan * ghn[j] * r * (S(1) - r);
    const S daz = dz * z * (S(1) - z);
    dgi[j] = dar;
    dgi[H + j] = daz;
    dgi[2 * H + j] = dan;
    dgh[j] = dar;
    dgh[H + j] = daz;
    dgh[2 * H + j] = dan * r;
  }
}

// ---------------------------------------------------------------- block cell

// Forward gates of one (row, group): v [3Hg] = r | c | u (normalised), hp [Hg].
// Writes the next state, the activations [3Hg] = reset | cand | update and c [Hg].
template <typename S>
inline void block_gates_forward(const S* __restrict v, const S* __restrict hp, int64_t Hg, S* __restrict h_out, S* __restrict gates, S* __restrict cval) {
  for (int64_t j = 0; j < Hg; ++j) {
    const S reset = sigmoid(v[j]);
    const S c = v[Hg + j];
    const S cand = tanh_act(reset * c);
    const S update = sigmoid(v[2 * Hg + j] - S(1));
    h_out[j] = update * cand + (S(1) - update) * hp[j];
    gates[j] = reset;
    gates[Hg + j] = cand;
    gates[2 * Hg + j] = update;
    cval[j] = c;
  }
}

// Backward gates of one (row, group): writes the carry (1 - update) * dh and the
// gradient of the normalised pre-activations dv [3Hg].
template <typename S>
inline void block_gates_backward(const S* __restrict dh, const S* __restrict gates, const S* __restrict cval, const S* __restrict hp, int64_t Hg,
                                 S* __restrict carry, S* __restrict dv) {
  for (int64_t j = 0; j < Hg; ++j) {
    const S reset = gates[j], cand = gates[Hg + j], update = gates[2 * Hg + j];
    const S dupdate = dh[j] * (cand - hp[j]);
    carry[j] = dh[j] * (S(1) - update);
    const S dpre = dh[j] * update * (S(1) - cand * cand);
    dv[j] = dpre * cval[j] * reset * (S(1) - reset);
    dv[Hg + j] = dpre * reset;
    dv[2 * Hg + j] = dupdate * update * (S(1) - update);
  }
}

}  // namespace gru
}  // namespace wm
