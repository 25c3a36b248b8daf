// pybind11 bindings of the first-person maze raycaster (csrc/maze_render.cpp).
//
// maze_render takes NumPy arrays, checks shapes, wall ids, the solid border and
// the pose range (so the ray walk can never leave the grid), releases the GIL
// and returns uint8 frames [B, T, 3, H, W]. Python wraps them with torch.from_numpy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>
#include <vector>

#include "array_checks.h"
#include "maze.h"
#include "registry.h"

namespace py = pybind11;

namespace wm {
namespace {

using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Every wall id below the palette size and every border cell a wall.
void check_mazes(const U8Array& mazes, int64_t palette_size) {
  const int64_t batch = mazes.shape(0), rows = mazes.shape(1), cols = mazes.shape(2);
  const uint8_t* m = mazes.data();
  for (int64_t b = 0; b < batch; ++b) {
    const uint8_t* grid = m + b * rows * cols;
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const uint8_t id = grid[i * cols + j];
        const bool border = i == 0 || j == 0 || i == rows - 1 || j == cols - 1;
        if (id < palette_size && (!border || id != 0)) continue;
        const std::string where = "mazes[" + std::to_string(b) + "] ";
        require(id < palette_size, where + "has wall id " + std::to_string(id) +
                                       " >= palette size " + std::to_string(palette_size));
        require(false, where + "border cell (" + std::to_string(i) + ", " + std::to_string(j) +
                           ") is empty; the border must be walls");
      }
    }
  }
}

// Finite poses with 1 <= x < cols - 1 and 1 <= y < rows - 1.
void check_poses(const F64Array& poses, int64_t rows, int64_t cols) {
  const double* p = poses.data();
  const int64_t count = poses.shape(0) * poses.shape(1);
  for (int64_t k = 0; k < count; ++k) {
    const double x = p[3 * k], y = p[3 * k + 1], t = p[3 * k + 2];
    const bool ok = std::isfinite(t) && x >= 1.0 && x < static_cast<double>(cols - 1) &&
                    y >= 1.0 && y < static_cast<double>(rows - 1);
    if (ok) continue;
    require(false, "pose " + std::to_string(k) + " (x=" + std::to_string(x) + ", y=" +
                       std::to_string(y) + ", theta=" + std::to_string(t) +
                       ") must be finite with 1 <= x < cols - 1 and 1 <= y < rows - 1");
  }
}

py::array render(const U8Array& mazes, const F64Array& poses, const U8Array& palette,
                 const U8Array& floor, const U8Array& ceiling, int64_t height, int64_t width,
                 double plane, int num_threads) {
  require(mazes.ndim() == 3, "mazes must be [B, rows, cols] uint8, got " + shape_of(mazes));
  require(poses.ndim() == 3 && poses.shape(2) == 3, "poses must be [B, T, 3], got " + shape_of(poses));
  require(poses.shape(0) == mazes.shape(0), "poses " + shape_of(poses) + " and mazes " +
                                                shape_of(mazes) + " must have the same B");
  require(mazes.shape(1) >= 3 && mazes.shape(2) >= 3, "mazes must be at least 3x3, got " + shape_of(mazes));
  require(palette.ndim() == 2 && palette.shape(1) == 3 && palette.shape(0) >= 1 &&
              palette.shape(0) <= 256, "palette must be [P, 3] with 1 <= P <= 256, got " + shape_of(palette));
  require(floor.ndim() == 1 && floor.shape(0) == 3, "floor must be [3], got " + shape_of(floor));
  require(ceiling.ndim() == 1 && ceiling.shape(0) == 3, "ceiling must be [3], got " + shape_of(ceiling));
  require(height >= 1 && width >= 1, "height and width must be >= 1, got " +
                                         std::to_string(height) + "x" + std::to_string(width));
  require(std::isfinite(plane) && plane > 0.0, "plane must be finite and > 0, got " + std::to_string(plane));
  check_mazes(mazes, palette.shape(0));
  check_poses(poses, mazes.shape(1), mazes.shape(2));

  const int64_t batch = poses.shape(0), seq_len = poses.shape(1);
  py::array_t<uint8_t> frames(std::vector<py::ssize_t>{batch, seq_len, 3, height, width});
  maze::RenderArgs a;
  a.mazes = mazes.data();
  a.poses = poses.data();
  a.palette = palette.data();
  a.floor = floor.data();
  a.ceiling = ceiling.data();
  a.batch = batch;
  a.seq_len = seq_len;
  a.rows = mazes.shape(1);
  a.cols = mazes.shape(2);
  a.height = height;
  a.width = width;
  a.plane = plane;
  a.out = frames.mutable_data();
  {
    py::gil_scoped_release release;
    maze::render(a, num_threads);
  }
  return frames;
}

}  // namespace

void register_maze(py::module_& m) {
  m.def("maze_render", &render, py::arg("mazes"), py::arg("poses"), py::arg("palette"),
        py::arg("floor"), py::arg("ceiling"), py::arg("height"), py::arg("width"),
        py::arg("plane"), py::arg("num_threads") = 0,
        "First-person raycast frames [B, T, 3, H, W] uint8 of mazes [B, rows, cols] uint8\n"
        "(0 empty, k > 0 wall of colour palette[k]) seen from poses [B, T, 3] float64\n"
        "(x, y, theta) in cell units and radians. palette [P, 3], floor [3], ceiling [3]\n"
        "uint8; plane = tan(fov / 2). num_threads <= 0 uses OpenMP's default; the\n"
        "frames do not depend on it.");
}

}  // namespace wm
