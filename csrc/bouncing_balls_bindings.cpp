// pybind11 bindings of the bouncing-balls simulator and renderer.
//
// The functions take and return NumPy arrays, check shapes and dtypes, and release
// the GIL around the compute. Python wraps the results with torch.from_numpy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "array_checks.h"
#include "bouncing_balls.h"
#include "registry.h"

namespace py = pybind11;

namespace wm {
namespace {

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using F32Array = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::tuple simulate(const F64Array& positions0, const F64Array& velocities0,
                   const F64Array& radii, const F64Array& masses, int64_t seq_len,
                   double size, int64_t substeps, int num_threads) {
  if (positions0.ndim() != 3) throw py::value_error("positions0 must be [B, N, 2]");
  const int64_t batch = positions0.shape(0);
  const int64_t n = positions0.shape(1);
  check_shape(positions0, "positions0", {batch, n, 2});
  check_shape(velocities0, "velocities0", {batch, n, 2});
  check_shape(radii, "radii", {batch, n});
  check_shape(masses, "masses", {batch, n});
  if (seq_len < 1) throw py::value_error("seq_len must be >= 1, got " + std::to_string(seq_len));
  if (substeps < 1) throw py::value_error("substeps must be >= 1, got " + std::to_string(substeps));

  F64Array positions({batch, seq_len, n, int64_t{2}});
  F64Array velocities({batch, seq_len, n, int64_t{2}});
  py::array_t<uint8_t> ball_flags({batch, seq_len});
  py::array_t<uint8_t> wall_flags({batch, seq_len});
  py::array_t<uint8_t> ball_wall_hits({batch, seq_len, n});
  bb::SimulateArgs a;
  a.positions0 = positions0.data();
  a.velocities0 = velocities0.data();
  a.radii = radii.data();
  a.masses = masses.data();
  a.batch = batch;
  a.seq_len = seq_len;
  a.num_balls = n;
  a.size = size;
  a.substeps = substeps;
  a.positions = positions.mutable_data();
  a.velocities = velocities.mutable_data();
  a.ball_flags = ball_flags.mutable_data();
  a.wall_flags = wall_flags.mutable_data();
  a.ball_wall_hits = ball_wall_hits.mutable_data();
  {
    py::gil_scoped_release release;
    bb::simulate(a, num_threads);
  }
  return py::make_tuple(positions, velocities, ball_flags, wall_flags, ball_wall_hits);
}

py::array render(const F64Array& positions, const F64Array& radii, const F32Array& colors,
                 int64_t size, bool as_float, int num_threads) {
  if (positions.ndim() != 4) throw py::value_error("positions must be [B, T, N, 2]");
  if (colors.ndim() != 3 && colors.ndim() != 4) {
    throw py::value_error("colors must be [B, N, C] or [B, T, N, C]");
  }
  const bool per_frame = colors.ndim() == 4;
  const int64_t batch = positions.shape(0);
  const int64_t seq_len = positions.shape(1);
  const int64_t n = positions.shape(2);
  const int64_t c = colors.shape(colors.ndim() - 1);
  check_shape(positions, "positions", {batch, seq_len, n, 2});
  check_shape(radii, "radii", {batch, n});
  if (per_frame) {
    check_shape(colors, "colors", {batch, seq_len, n, c});
  } else {
    check_shape(colors, "colors", {batch, n, c});
  }
  if (c != 1 && c != 3) throw py::value_error("channels must be 1 or 3, got " + std::to_string(c));
  if (size < 1) throw py::value_error("size must be >= 1, got " + std::to_string(size));

  const std::vector<py::ssize_t> shape{batch, seq_len, c, size, size};
  bb::RenderArgs a;
  a.positions = positions.data();
  a.radii = radii.data();
  a.colors = colors.data();
  a.colors_per_frame = per_frame;
  a.batch = batch;
  a.seq_len = seq_len;
  a.num_balls = n;
  a.channels = c;
  a.size = size;
  a.out_u8 = nullptr;
  a.out_f32 = nullptr;
  py::array out;
  if (as_float) {
    py::array_t<float> frames(shape);
    a.out_f32 = frames.mutable_data();
    out = frames;
  } else {
    py::array_t<uint8_t> frames(shape);
    a.out_u8 = frames.mutable_data();
    out = frames;
  }
  {
    py::gil_scoped_release release;
    bb::render(a, num_threads);
  }
  return out;
}

}  // namespace

void register_bouncing_balls(py::module_& m) {
  m.def("bouncing_balls_simulate", &simulate, py::arg("positions0"), py::arg("velocities0"),
        py::arg("radii"), py::arg("masses"), py::arg("seq_len"), py::arg("size"),
        py::arg("substeps"), py::arg("num_threads") = 0,
        "Simulates B sequences of N balls for T frames in float64.\n\n"
        "positions0, velocities0: [B, N, 2]; radii, masses: [B, N]. Returns\n"
        "(positions [B, T, N, 2], velocities [B, T, N, 2], ball_flags [B, T] uint8,\n"
        "wall_flags [B, T] uint8, ball_wall_hits [B, T, N] uint8). num_threads <= 0\n"
        "uses OpenMP's default.");
  m.def("bouncing_balls_render", &render, py::arg("positions"), py::arg("radii"),
        py::arg("colors"), py::arg("size"), py::arg("as_float") = false,
        py::arg("num_threads") = 0,
        "Renders frames [B, T, C, size, size] (uint8, or float32 when as_float) from\n"
        "positions [B, T, N, 2], radii [B, N] and colors [B, N, C] or, per frame,\n"
        "[B, T, N, C] (C = 1 or 3).");
}

}  // namespace wm
