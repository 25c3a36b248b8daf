// Bouncing-balls physics in float64, written to round exactly like the NumPy
// reference (worldmodels/envs/bouncing_balls_ref.py): same operations in the same
// order, no FMA contraction (-ffp-contract=off), no fast-math in this file.
#include <algorithm>
#include <cmath>
#include <vector>

#include "bouncing_balls.h"

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace wm {
namespace bb {
namespace {

// Per-sequence state as structure of arrays, N entries each.
struct State {
  std::vector<double> px, py, vx, vy, r, m;
};

void load_state(const SimulateArgs& a, int64_t b, State& s) {
  const int64_t n = a.num_balls;
  for (int64_t k = 0; k < n; ++k) {
    s.px[k] = a.positions0[(b * n + k) * 2 + 0];
    s.py[k] = a.positions0[(b * n + k) * 2 + 1];
    s.vx[k] = a.velocities0[(b * n + k) * 2 + 0];
    s.vy[k] = a.velocities0[(b * n + k) * 2 + 1];
    s.r[k] = a.radii[b * n + k];
    s.m[k] = a.masses[b * n + k];
  }
}

void store_frame(const SimulateArgs& a, int64_t b, int64_t t, const State& s) {
  const int64_t n = a.num_balls;
  const int64_t base = (b * a.seq_len + t) * n * 2;
  for (int64_t k = 0; k < n; ++k) {
    a.positions[base + 2 * k + 0] = s.px[k];
    a.positions[base + 2 * k + 1] = s.py[k];
    a.velocities[base + 2 * k + 0] = s.vx[k];
    a.velocities[base + 2 * k + 1] = s.vy[k];
  }
}

// Mirrors a ball at the walls of one axis: near wall at 0, far wall at `size`.
// Returns whether it reflected.
bool reflect_axis(double& p, double& v, double r, double size) {
  bool hit = false;
  if (p - r < 0.0 && v < 0.0) {
    v = -v;
    p = 2.0 * r - p;
    hit = true;
  }
  if (p + r > size && v > 0.0) {
    v = -v;
    p = 2.0 * (size - r) - p;
    hit = true;
  }
  return hit;
}

double clamp_to_box(double p, double r, double size) {
  return std::min(std::max(p, r), size - r);
}

// Resolves one overlapping pair i < j: elastic impulse along the normal when
// approaching, then a push-apart of the overlap split by inverse mass (keeps the
// centre of mass), then a clamp of both centres into the box. Returns whether an
// impulse was applied.
bool collide_pair(State& s, int64_t i, int64_t j, double size) {
  const double dx = s.px[j] - s.px[i];
  const double dy = s.py[j] - s.py[i];
  const double d2 = dx * dx + dy * dy;
  const double rs = s.r[i] + s.r[j];
  if (!(d2 < rs * rs && d2 > 0.0)) return false;
  const double d = std::sqrt(d2);
  const double nx = dx / d;
  const double ny = dy / d;
  const double inv_i = 1.0 / s.m[i];
  const double inv_j = 1.0 / s.m[j];
  const double inv_sum = inv_i + inv_j;
  const double vn = (s.vx[j] - s.vx[i]) * nx + (s.vy[j] - s.vy[i]) * ny;
  const bool approaching = vn < 0.0;
  if (approaching) {
    const double impulse = 2.0 * vn / inv_sum;
    const double ci = impulse * inv_i;
    const double cj = impulse * inv_j;
    s.vx[i] = s.vx[i] + ci * nx;
    s.vy[i] = s.vy[i] + ci * ny;
    s.vx[j] = s.vx[j] - cj * nx;
    s.vy[j] = s.vy[j] - cj * ny;
  }
  const double overlap = rs - d;
  const double si = overlap * (inv_i / inv_sum);
  const double sj = overlap * (inv_j / inv_sum);
  s.px[i] = clamp_to_box(s.px[i] - si * nx, s.r[i], size);
  s.py[i] = clamp_to_box(s.py[i] - si * ny, s.r[i], size);
  s.px[j] = clamp_to_box(s.px[j] + sj * nx, s.r[j], size);
  s.py[j] = clamp_to_box(s.py[j] + sj * ny, s.r[j], size);
  return approaching;
}

// One sub-step of length dt; sets the flags when a wall or ball event happens and
// wall_hits[k] (N entries) when ball k reflects at a wall.
void substep(State& s, int64_t n, double dt, double size, bool& wall, bool& ball,
             uint8_t* wall_hits) {
  for (int64_t k = 0; k < n; ++k) {
    s.px[k] = s.px[k] + s.vx[k] * dt;
    s.py[k] = s.py[k] + s.vy[k] * dt;
  }
  for (int64_t k = 0; k < n; ++k) {
    const bool hit_x = reflect_axis(s.px[k], s.vx[k], s.r[k], size);
    const bool hit_y = reflect_axis(s.py[k], s.vy[k], s.r[k], size);
    if (hit_x || hit_y) {
      wall_hits[k] = 1;
      wall = true;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i + 1; j < n; ++j) {
      ball = collide_pair(s, i, j, size) || ball;
    }
  }
}

void simulate_sequence(const SimulateArgs& a, int64_t b, State& s) {
  const double dt = 1.0 / static_cast<double>(a.substeps);
  load_state(a, b, s);
  store_frame(a, b, 0, s);
  a.ball_flags[b * a.seq_len] = 0;
  a.wall_flags[b * a.seq_len] = 0;
  std::fill(a.ball_wall_hits + b * a.seq_len * a.num_balls,
            a.ball_wall_hits + (b + 1) * a.seq_len * a.num_balls, uint8_t{0});
  for (int64_t t = 1; t < a.seq_len; ++t) {
    bool wall = false;
    bool ball = false;
    uint8_t* wall_hits = a.ball_wall_hits + (b * a.seq_len + t) * a.num_balls;
    for (int64_t k = 0; k < a.substeps; ++k) {
      substep(s, a.num_balls, dt, a.size, wall, ball, wall_hits);
    }
    store_frame(a, b, t, s);
    a.ball_flags[b * a.seq_len + t] = ball ? 1 : 0;
    a.wall_flags[b * a.seq_len + t] = wall ? 1 : 0;
  }
}

}  // namespace

int resolve_threads(int requested) {
  if (requested > 0) return requested;
#ifdef WM_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void simulate(const SimulateArgs& a, int num_threads) {
  const int threads = resolve_threads(num_threads);
  (void)threads;
#ifdef WM_HAVE_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const auto n = static_cast<size_t>(a.num_balls);
    State s{std::vector<double>(n), std::vector<double>(n), std::vector<double>(n),
            std::vector<double>(n), std::vector<double>(n), std::vector<double>(n)};
#ifdef WM_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t b = 0; b < a.batch; ++b) {
      simulate_sequence(a, b, s);
    }
  }
}

}  // namespace bb
}  // namespace wm
