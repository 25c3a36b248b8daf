// Batched bouncing-balls simulator and renderer (pure C++, no Python types).
//
// The physics (bouncing_balls_physics.cpp) follows worldmodels/envs/bouncing_balls_ref.py
// operation for operation in float64, so trajectories match the NumPy reference
// bit for bit. The renderer (bouncing_balls_render.cpp) draws the smooth disc
// profile exp(-(d^2/r^2)^4) in float32 with a lookup table. The pybind11 bindings
// live in bouncing_balls_bindings.cpp.
#pragma once

#include <cstdint>

namespace wm {
namespace bb {

// Inputs and outputs of one batched simulation; every array is C-contiguous.
struct SimulateArgs {
  const double* positions0;  // [B, N, 2] (x, y) in pixels
  const double* velocities0; // [B, N, 2] pixels per frame
  const double* radii;       // [B, N] pixels
  const double* masses;      // [B, N]
  int64_t batch = 0;         // B
  int64_t seq_len = 0;       // T (frame 0 is the initial state)
  int64_t num_balls = 0;     // N
  double size = 0.0;         // the box is [0, size] x [0, size]
  int64_t substeps = 1;      // sub-steps per frame, dt = 1 / substeps
  double* positions;         // out [B, T, N, 2]
  double* velocities;        // out [B, T, N, 2]
  uint8_t* ball_flags;       // out [B, T]: a ball-ball impulse during step t-1 -> t
  uint8_t* wall_flags;       // out [B, T]: a wall reflection during step t-1 -> t
  uint8_t* ball_wall_hits;   // out [B, T, N]: ball n reflected at a wall during step t-1 -> t
};

// Inputs and outputs of one batched rendering; every array is C-contiguous.
// Exactly one of out_u8 / out_f32 is non-null.
struct RenderArgs {
  const double* positions;  // [B, T, N, 2] (x, y) in pixels
  const double* radii;      // [B, N] pixels
  const float* colors;      // [B, N, C] per-ball colour, or [B, T, N, C] per frame when
                            // colors_per_frame; each channel in [0, 1]
  bool colors_per_frame = false;
  int64_t batch = 0;        // B
  int64_t seq_len = 0;      // T
  int64_t num_balls = 0;    // N
  int64_t channels = 1;     // C, 1 or 3
  int64_t size = 0;         // H = W = size
  uint8_t* out_u8;          // out [B, T, C, H, W], round(255 * v)
  float* out_f32;           // out [B, T, C, H, W], v in [0, 1]
};

// The thread count to use: `requested` when positive, else OpenMP's default.
int resolve_threads(int requested);

// Simulates every sequence independently (OpenMP over sequences, static schedule);
// the result does not depend on num_threads.
void simulate(const SimulateArgs& args, int num_threads);

// Renders every frame independently (OpenMP over frames, static schedule);
// the result does not depend on num_threads.
void render(const RenderArgs& args, int num_threads);

}  // namespace bb
}  // namespace wm
