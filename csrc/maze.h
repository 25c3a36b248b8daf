// Batched first-person maze raycaster (pure C++, no Python types).
//
// Follows worldmodels/envs/maze_ref.py operation for operation in float64 (DDA
// per screen column, wall height H / distance, shading by side and distance),
// so the frames match the NumPy reference exactly. The pybind11 bindings live
// in maze.cpp.
//
// Units: a maze is a grid [rows, cols] of cells, 0 = empty, k > 0 = wall of
// colour palette[k]; cell (i, j) covers x in [j, j + 1), y in [i, i + 1). A pose
// is (x, y, theta) in cell units and radians; the view direction is
// (cos theta, sin theta) and the camera's right is (-sin theta, cos theta).
#pragma once

#include <cstdint>

namespace wm {
namespace maze {

// Shading constants, shared with maze_ref.py (SIDE_SHADE, DISTANCE_FALLOFF,
// MIN_DISTANCE).
constexpr double kSideShade = 0.7;        // faces hit across y (north/south) are darker
constexpr double kDistanceFalloff = 0.25;  // shade = side / (1 + falloff * distance)
constexpr double kMinDistance = 1e-3;      // perpendicular distances are clamped here

// Inputs and outputs of one batched rendering; every array is C-contiguous.
struct RenderArgs {
  const uint8_t* mazes;    // [B, rows, cols] wall ids; border cells all walls
  const double* poses;     // [B, T, 3] (x, y, theta), 1 <= x < cols - 1, 1 <= y < rows - 1
  const uint8_t* palette;  // [P, 3] wall colours, every wall id < P
  const uint8_t* floor;    // [3]
  const uint8_t* ceiling;  // [3]
  int64_t batch = 0;       // B
  int64_t seq_len = 0;     // T
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t height = 0;      // H pixels
  int64_t width = 0;       // W pixels
  double plane = 0.0;      // tan(fov / 2): half-width of the camera plane at distance 1
  uint8_t* out;            // out [B, T, 3, H, W]
};

// The thread count to use: `requested` when positive, else OpenMP's default.
int resolve_threads(int requested);

// Renders every frame independently (OpenMP over frames, static schedule); the
// result does not depend on num_threads.
void render(const RenderArgs& args, int num_threads);

}  // namespace maze
}  // namespace wm
