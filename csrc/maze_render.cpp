// Maze raycaster: one DDA ray per screen column, then a row-major fill per frame.
//
// Every quantity is computed in float64 in the order of maze_ref.py (the build
// disables FMA contraction), so the uint8 frames equal the reference's. Frames are
// independent: OpenMP splits them statically over threads, and each thread keeps
// its per-column scratch (wall span and colour, structure of arrays) in small
// vectors. The fill is a branch-free select that GCC vectorises (uint8 spans when
// H <= 255); the ray walk costs about as much as the fill at 32x32.
#include <algorithm>
#include <cmath>
#include <vector>

#include "maze.h"

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace wm {
namespace maze {
namespace {

constexpr double kBig = 1e30;  // |1 / ray component| when that component is 0

// What one ray sees: the wall id, the face (0: crossed an x line, 1: a y line) and
// the perpendicular distance to the camera plane, clamped to kMinDistance.
struct Hit {
  int id;
  int side;
  double distance;
};

// Per-column scratch of one frame, structure of arrays so the row fill vectorises:
// the wall covers pixel rows [start[x], end[x]) of column x, in colour color[c][x].
struct Columns {
  std::vector<int32_t> start, end;
  std::vector<uint8_t> color[3];
  explicit Columns(int64_t width)
      : start(width), end(width), color{std::vector<uint8_t>(width), std::vector<uint8_t>(width),
                                        std::vector<uint8_t>(width)} {}
};

// Walks the grid from (px, py) along (rdx, rdy) until a wall cell. The maze border
// is solid and the start lies inside it, so the walk stops within rows + cols steps.
Hit cast_ray(const uint8_t* grid, int64_t cols, int64_t max_steps, double px, double py,
             double rdx, double rdy) {
  int64_t mx = static_cast<int64_t>(std::floor(px));
  int64_t my = static_cast<int64_t>(std::floor(py));
  const double ddx = rdx == 0.0 ? kBig : std::fabs(1.0 / rdx);
  const double ddy = rdy == 0.0 ? kBig : std::fabs(1.0 / rdy);
  const int64_t sx = rdx < 0.0 ? -1 : 1;
  const int64_t sy = rdy < 0.0 ? -1 : 1;
  double side_x = rdx < 0.0 ? (px - static_cast<double>(mx)) * ddx
                            : (static_cast<double>(mx) + 1.0 - px) * ddx;
  double side_y = rdy < 0.0 ? (py - static_cast<double>(my)) * ddy
                            : (static_cast<double>(my) + 1.0 - py) * ddy;
  Hit hit{0, 0, 0.0};
  for (int64_t step = 0; step < max_steps; ++step) {
    if (side_x < side_y) {
      side_x += ddx;
      mx += sx;
      hit.side = 0;
    } else {
      side_y += ddy;
      my += sy;
      hit.side = 1;
    }
    hit.id = grid[my * cols + mx];
    if (hit.id != 0) break;
  }
  const double distance = hit.side == 0 ? side_x - ddx : side_y - ddy;
  hit.distance = std::max(distance, kMinDistance);
  return hit;
}

// Stores the wall span and shaded colour of column x, which sees `hit`.
void shade_column(const Hit& hit, const uint8_t* palette, int64_t height, int64_t x,
                  Columns& cols) {
  const double h = static_cast<double>(height);
  const double wall = h / hit.distance;
  const double top = 0.5 * (h - wall);
  const double bottom = 0.5 * (h + wall);
  cols.start[x] = static_cast<int32_t>(std::min(h, std::max(0.0, std::ceil(top - 0.5))));
  cols.end[x] = static_cast<int32_t>(std::min(h, std::max(0.0, std::ceil(bottom - 0.5))));
  const double side = hit.side == 1 ? kSideShade : 1.0;
  const double shade = side / (1.0 + kDistanceFalloff * hit.distance);
  for (int c = 0; c < 3; ++c) {
    const double v = static_cast<double>(palette[hit.id * 3 + c]) * shade;
    cols.color[c][x] = static_cast<uint8_t>(std::floor(v + 0.5));
  }
}

// Casts the W rays of frame f = b * T + t into `columns`.
void cast_frame(const RenderArgs& a, int64_t f, Columns& cols) {
  const int64_t b = f / a.seq_len;
  const uint8_t* grid = a.mazes + b * a.rows * a.cols;
  const double* pose = a.poses + f * 3;
  const double cos_t = std::cos(pose[2]);
  const double sin_t = std::sin(pose[2]);
  const double w = static_cast<double>(a.width);
  const int64_t max_steps = a.rows + a.cols;
  for (int64_t x = 0; x < a.width; ++x) {
    const double cam = (2.0 * static_cast<double>(x) + 1.0) / w - 1.0;
    const double off = cam * a.plane;
    const double rdx = cos_t - sin_t * off;
    const double rdy = sin_t + cos_t * off;
    const Hit hit = cast_ray(grid, a.cols, max_steps, pose[0], pose[1], rdx, rdy);
    shade_column(hit, a.palette, a.height, x, cols);
  }
}

// Writes frame f [3, H, W] row by row: ceiling above each column's wall span,
// the wall colour inside it, floor below. The per-pixel select is branch-free on
// spans of type Span (uint8_t when H <= 255: 16 pixels per SSE2 compare).
template <typename Span>
void fill_frame(const RenderArgs& a, int64_t f, const Columns& cols, Span* start, Span* end) {
  const int64_t plane = a.height * a.width;
  const int64_t width = a.width;
  for (int64_t x = 0; x < width; ++x) {
    start[x] = static_cast<Span>(cols.start[x]);
    end[x] = static_cast<Span>(cols.end[x]);
  }
  uint8_t* frame = a.out + f * 3 * plane;
  for (int c = 0; c < 3; ++c) {
    const uint8_t up = a.ceiling[c];
    const uint8_t down = a.floor[c];
    const uint8_t* color = cols.color[c].data();
    for (int64_t r = 0; r < a.height; ++r) {
      uint8_t* row = frame + c * plane + r * width;
      const Span ri = static_cast<Span>(r);
      for (int64_t x = 0; x < width; ++x) {
        const uint8_t above = static_cast<uint8_t>(-static_cast<int>(ri < start[x]));
        const uint8_t inside = static_cast<uint8_t>(-static_cast<int>(ri < end[x]));
        const uint8_t lower = static_cast<uint8_t>((inside & color[x]) | (~inside & down));
        row[x] = static_cast<uint8_t>((above & up) | (~above & lower));
      }
    }
  }
}

}  // namespace

int resolve_threads(int requested) {
#ifdef WM_HAVE_OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

void render(const RenderArgs& a, int num_threads) {
  const int64_t frames = a.batch * a.seq_len;
  const int threads = resolve_threads(num_threads);
  (void)threads;
#ifdef WM_HAVE_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    Columns cols(a.width);
    std::vector<uint8_t> start8(a.width), end8(a.width);
    std::vector<int32_t> start32(a.width), end32(a.width);
    const bool small = a.height <= 255;
#ifdef WM_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t f = 0; f < frames; ++f) {
      cast_frame(a, f, cols);
      if (small) {
        fill_frame(a, f, cols, start8.data(), end8.data());
      } else {
        fill_frame(a, f, cols, start32.data(), end32.data());
      }
    }
  }
}

}  // namespace maze
}  // namespace wm
