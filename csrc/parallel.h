// The OpenMP thread count of a CPU kernel, shared by the extension's parts.
#pragma once

#include <cstdint>

#ifdef WM_HAVE_OPENMP
#include <omp.h>
#endif

namespace wm {

// Threads for `work` elements: 1 below `min_work` (where fork/join costs more than it
// saves) or without OpenMP, else `num_threads` (0: OpenMP's default).
inline int threads_for(int64_t work, int num_threads, int64_t min_work) {
#ifdef WM_HAVE_OPENMP
  if (work < min_work) return 1;
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)work;
  (void)num_threads;
  (void)min_work;
  return 1;
#endif
}

}  // namespace wm
