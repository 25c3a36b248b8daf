// CPU fast path of worldmodels.ops.onehot_linear: the part of a Linear layer whose
// input is S one-hot groups of K classes (DreamerV3's sampled latents).
//
// With index [N, S] (class k of group s) and table [S*K, U] (the one-hot columns of the
// weight, transposed: row s*K + k is the column that class k of group s selects):
//   gather:  out[n, :]            = sum_s table[s*K + index[n, s], :]      (forward)
//   scatter: out[s*K + index[n, s], :] += grad[n, :]   for all n, s         (weight gradient)
// A dense product would spend S*K multiply-adds per output where these spend S adds.
//
// Gather parallelises over rows n; scatter over column blocks of U (each thread owns
// out[:, u0:u1], so no two threads write the same memory), accumulating each block in
// a packed buffer. The inner loops are compiled for AVX-512, AVX2 and the baseline, picked at
// load time. Buffers are C-order NumPy arrays; the GIL is released around the compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
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

// Work below which OpenMP's fork/join costs more than it saves (multiply-adds).
constexpr int64_t kParallelMin = 1 << 18;
// Columns per scatter block: a block of every row of a 32x32 table is 1024 * 64 * 4
// bytes = 256 KiB, which stays in L2 while the rows of grad stream past.
constexpr int64_t kScatterBlock = 64;

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define WM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WM_CLONES
#endif

template <typename T>
WM_CLONES void gather_rows(const T* table, const int64_t* index, T* out, int64_t first, int64_t last,
                           int64_t groups, int64_t classes, int64_t units) {
  for (int64_t n = first; n < last; ++n) {
    T* row = out + n * units;
    const int64_t* picks = index + n * groups;
    std::fill(row, row + units, T(0));
    for (int64_t s = 0; s < groups; ++s) {
      const T* src = table + (s * classes + picks[s]) * units;
      for (int64_t u = 0; u < units; ++u) row[u] += src[u];
    }
  }
}

template <typename T>
WM_CLONES void scatter_block(const T* grad, const int64_t* index, T* out, T* acc, int64_t rows, int64_t u0,
                             int64_t u1, int64_t groups, int64_t classes, int64_t units) {
  // Accumulate into a packed [S*K, u1 - u0] block: the rows of ``out`` are ``units`` apart,
  // a power of two that would map every row of the block to the same few cache sets.
  const int64_t width = u1 - u0, table_rows = groups * classes;
  std::fill(acc, acc + table_rows * width, T(0));
  for (int64_t n = 0; n < rows; ++n) {
    const T* src = grad + n * units + u0;
    const int64_t* picks = index + n * groups;
    for (int64_t s = 0; s < groups; ++s) {
      T* dst = acc + (s * classes + picks[s]) * width;
      for (int64_t u = 0; u < width; ++u) dst[u] += src[u];
    }
  }
  for (int64_t r = 0; r < table_rows; ++r) std::copy(acc + r * width, acc + (r + 1) * width, out + r * units + u0);
}

void check_index(const int64_t* index, int64_t rows, int64_t groups, int64_t classes) {
  for (int64_t i = 0; i < rows * groups; ++i) {
    if (index[i] < 0 || index[i] >= classes) {
      throw py::value_error("index[" + std::to_string(i / groups) + ", " + std::to_string(i % groups) + "] = " +
                            std::to_string(index[i]) + " is outside [0, classes=" + std::to_string(classes) +
                            ")");
    }
  }
}

template <typename T>
using Array = py::array_t<T, py::array::c_style>;
using IndexArray = py::array_t<int64_t, py::array::c_style>;

template <typename T>
Array<T> gather(const Array<T>& table, const IndexArray& index, int64_t classes, int num_threads) {
  require(table.ndim() == 2 && index.ndim() == 2, "table must be [S*K, U] and index [N, S], got table " +
                                                      shape_of(table) + " and index " + shape_of(index));
  const int64_t rows = index.shape(0), groups = index.shape(1), units = table.shape(1);
  require(classes >= 1 && table.shape(0) == groups * classes,
          "table must have S*K = " + std::to_string(groups) + "*" + std::to_string(classes) + " rows, got " +
              shape_of(table));
  check_index(index.data(), rows, groups, classes);
  Array<T> out({rows, units});
  const T* t = table.data();
  const int64_t* i = index.data();
  T* o = out.mutable_data();
  const int threads = threads_for(rows * groups * units, num_threads, kParallelMin);
  {
    py::gil_scoped_release release;
#ifdef WM_HAVE_OPENMP
#pragma omp parallel num_threads(threads)
    {
      const int64_t count = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t chunk = (rows + count - 1) / count;
      gather_rows(t, i, o, std::min(rows, me * chunk), std::min(rows, (me + 1) * chunk), groups, classes, units);
    }
#else
    (void)threads;
    gather_rows(t, i, o, 0, rows, groups, classes, units);
#endif
  }
  return out;
}

template <typename T>
Array<T> scatter(const Array<T>& grad, const IndexArray& index, int64_t classes, int num_threads) {
  require(grad.ndim() == 2 && index.ndim() == 2 && grad.shape(0) == index.shape(0),
          "grad must be [N, U] and index [N, S] with the same N, got grad " + shape_of(grad) + " and index " +
              shape_of(index));
  require(classes >= 1, "classes must be >= 1, got " + std::to_string(classes));
  const int64_t rows = index.shape(0), groups = index.shape(1), units = grad.shape(1);
  check_index(index.data(), rows, groups, classes);
  Array<T> out({groups * classes, units});
  const T* g = grad.data();
  const int64_t* i = index.data();
  T* o = out.mutable_data();
  const int64_t blocks = (units + kScatterBlock - 1) / kScatterBlock;
  const int threads = threads_for(rows * groups * units, num_threads, kParallelMin);
  {
    py::gil_scoped_release release;
#ifdef WM_HAVE_OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
      std::vector<T> acc(static_cast<size_t>(groups * classes * kScatterBlock));
#ifdef WM_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < blocks; ++b) {
        scatter_block(g, i, o, acc.data(), rows, b * kScatterBlock, std::min(units, (b + 1) * kScatterBlock), groups,
                      classes, units);
      }
    }
    (void)threads;
  }
  return out;
}

template <typename T>
void bind(py::module_& m, const std::string& suffix) {
  m.def(("onehot_gather_sum_" + suffix).c_str(), &gather<T>, py::arg("table"), py::arg("index"),
        py::arg("classes"), py::arg("num_threads") = 0,
        "out[n] = sum_s table[s*K + index[n, s]]: table [S*K, U], index int64 [N, S] in [0, K) -> [N, U].");
  m.def(("onehot_scatter_sum_" + suffix).c_str(), &scatter<T>, py::arg("grad"), py::arg("index"),
        py::arg("classes"), py::arg("num_threads") = 0,
        "out[s*K + index[n, s]] += grad[n]: grad [N, U], index int64 [N, S] in [0, K) -> [S*K, U].");
}

}  // namespace

void register_onehot_linear(py::module_& m) {
  bind<float>(m, "f32");
  bind<double>(m, "f64");
}

}  // namespace wm
