// Bouncing-balls renderer: the smooth disc profile exp(-(d^2/r^2)^4) in float32.
//
// Each frame is accumulated in a small per-thread float buffer [C, H, W] (L1
// resident for 32x32 and 64x64), touching only each ball's bounding box where the
// profile is non-negligible (d <= 1.6 r, beyond which it is < 1e-18), then clipped
// to [0, 1] and written out. The profile comes from a lookup table over
// q = d^2 / r^2 with linear interpolation (error < 1e-5, far below 1/255).
#include <algorithm>
#include <cmath>
#include <vector>

#include "bouncing_balls.h"

namespace wm {
namespace bb {
namespace {

constexpr float kReach = 1.6f;              // profile support, in radii
constexpr float kQMax = kReach * kReach;    // q = d^2 / r^2 beyond this is 0
constexpr int kLutIntervals = 2048;

// Profile f(q) = exp(-q^4) sampled at q_i = i * kQMax / kLutIntervals; the entry
// kLutIntervals (and beyond q_max) is 0 with slope 0, so clamped lookups give 0.
struct ProfileLut {
  float value[kLutIntervals + 1];
  float slope[kLutIntervals + 1];
  float scale;  // kLutIntervals / kQMax

  ProfileLut() : scale(static_cast<float>(kLutIntervals) / kQMax) {
    const double h = static_cast<double>(kQMax) / kLutIntervals;
    for (int i = 0; i <= kLutIntervals; ++i) {
      const double q0 = i * h;
      const double q1 = (i + 1) * h;
      const double f0 = i == kLutIntervals ? 0.0 : std::exp(-(q0 * q0) * (q0 * q0));
      const double f1 = i >= kLutIntervals - 1 ? 0.0 : std::exp(-(q1 * q1) * (q1 * q1));
      value[i] = static_cast<float>(f0);
      slope[i] = i == kLutIntervals ? 0.0f : static_cast<float>(f1 - f0);
    }
  }

  float operator()(float q) const {
    const float t = std::min(q * scale, static_cast<float>(kLutIntervals));
    const int i = static_cast<int>(t);
    return value[i] + (t - static_cast<float>(i)) * slope[i];
  }
};

const ProfileLut& profile_lut() {
  static const ProfileLut lut;
  return lut;
}

// Inclusive pixel range [lo, hi] whose centres k + 0.5 lie within `reach` of c.
inline void pixel_span(float c, float reach, int size, int& lo, int& hi) {
  lo = std::max(0, static_cast<int>(std::ceil(c - reach - 0.5f)));
  hi = std::min(size - 1, static_cast<int>(std::floor(c + reach - 0.5f)));
}

// Adds ball (cx, cy, r) with colour `color[C]` into acc [C, S, S].
// `dx2` is scratch of at least S floats.
template <int C>
void splat_ball(float cx, float cy, float r, const float* color, int size,
                const ProfileLut& lut, float* dx2, float* acc) {
  const float reach = kReach * r;
  int j0, j1, i0, i1;
  pixel_span(cx, reach, size, j0, j1);
  pixel_span(cy, reach, size, i0, i1);
  if (j0 > j1 || i0 > i1) return;
  const float inv_r2 = 1.0f / (r * r);
  for (int j = j0; j <= j1; ++j) {
    const float dx = (static_cast<float>(j) + 0.5f) - cx;
    dx2[j] = dx * dx * inv_r2;
  }
  const int plane = size * size;
  for (int i = i0; i <= i1; ++i) {
    const float dy = (static_cast<float>(i) + 0.5f) - cy;
    const float dy2 = dy * dy * inv_r2;
    float* row = acc + i * size;
    for (int j = j0; j <= j1; ++j) {
      const float p = lut(dy2 + dx2[j]);
      for (int c = 0; c < C; ++c) row[c * plane + j] += color[c] * p;
    }
  }
}

inline void store_pixels(const float* acc, int count, uint8_t* out) {
  for (int k = 0; k < count; ++k) {
    const float v = acc[k] < 1.0f ? acc[k] : 1.0f;
    out[k] = static_cast<uint8_t>(static_cast<int>(v * 255.0f + 0.5f));
  }
}

inline void store_pixels(const float* acc, int count, float* out) {
  for (int k = 0; k < count; ++k) out[k] = acc[k] < 1.0f ? acc[k] : 1.0f;
}

// Rows [lo, hi] that any ball of frame `pos` [N, 2] can touch (lo > hi: none).
inline void touched_rows(const double* pos, const double* radii, int64_t n, int size,
                         int& lo, int& hi) {
  lo = size;
  hi = -1;
  for (int64_t k = 0; k < n; ++k) {
    int i0, i1;
    pixel_span(static_cast<float>(pos[2 * k + 1]), kReach * static_cast<float>(radii[k]),
               size, i0, i1);
    if (i0 > i1) continue;
    lo = std::min(lo, i0);
    hi = std::max(hi, i1);
  }
}

// Renders frame f = b * T + t into out + f * C * S * S. Only the rows some ball can
// touch go through the float accumulator; the others are written as zeros.
template <int C, typename Out>
void render_frame(const RenderArgs& a, int64_t f, const ProfileLut& lut, float* acc,
                  float* dx2, Out* out) {
  const int size = static_cast<int>(a.size);
  const int plane = size * size;
  const int64_t b = f / a.seq_len;
  const double* pos = a.positions + f * a.num_balls * 2;
  const double* radii = a.radii + b * a.num_balls;
  const float* colors = a.colors + (a.colors_per_frame ? f : b) * a.num_balls * C;
  Out* frame = out + f * C * plane;
  int lo, hi;
  touched_rows(pos, radii, a.num_balls, size, lo, hi);
  if (lo > hi) {
    std::fill(frame, frame + C * plane, Out(0));
    return;
  }
  const int first = lo * size;
  const int count = (hi + 1 - lo) * size;
  for (int c = 0; c < C; ++c) std::fill(acc + c * plane + first, acc + c * plane + first + count, 0.0f);
  for (int64_t k = 0; k < a.num_balls; ++k) {
    splat_ball<C>(static_cast<float>(pos[2 * k]), static_cast<float>(pos[2 * k + 1]),
                  static_cast<float>(radii[k]), colors + k * C, size,
                  lut, dx2, acc);
  }
  for (int c = 0; c < C; ++c) {
    Out* channel = frame + c * plane;
    std::fill(channel, channel + first, Out(0));
    store_pixels(acc + c * plane + first, count, channel + first);
    std::fill(channel + first + count, channel + plane, Out(0));
  }
}

template <int C, typename Out>
void render_all(const RenderArgs& a, int num_threads, Out* out) {
  const ProfileLut& lut = profile_lut();
  const int64_t frames = a.batch * a.seq_len;
  const int threads = resolve_threads(num_threads);
  (void)threads;
#ifdef WM_HAVE_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> acc(static_cast<size_t>(C * a.size * a.size));
    std::vector<float> dx2(static_cast<size_t>(a.size));
#ifdef WM_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t f = 0; f < frames; ++f) {
      render_frame<C>(a, f, lut, acc.data(), dx2.data(), out);
    }
  }
}

template <int C>
void render_channels(const RenderArgs& a, int num_threads) {
  if (a.out_u8 != nullptr) {
    render_all<C>(a, num_threads, a.out_u8);
  } else {
    render_all<C>(a, num_threads, a.out_f32);
  }
}

}  // namespace

void render(const RenderArgs& a, int num_threads) {
  if (a.channels == 1) {
    render_channels<1>(a, num_threads);
  } else {
    render_channels<3>(a, num_threads);
  }
}

}  // namespace bb
}  // namespace wm
