#include "sftgo/core/malloc_tuning.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace sftgo {

std::string tune_malloc_for_training() {
#if defined(__GLIBC__)
  const char* off = std::getenv("SFTGO_MALLOC_TUNING");
  if (off != nullptr && std::strcmp(off, "0") == 0) return "glibc malloc left at its defaults (SFTGO_MALLOC_TUNING=0)";
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr)
    return "glibc malloc: MALLOC_MMAP_THRESHOLD_ from the environment is kept";
  if (mallopt(M_MMAP_THRESHOLD, kMallocMmapThreshold) != 1) return "glibc malloc: setting M_MMAP_THRESHOLD failed";
  return "glibc malloc: blocks of 1 MiB or more are mmapped and returned when freed (SFTGO_MALLOC_TUNING=0 "
         "keeps glibc's defaults)";
#else
  return "malloc left at its defaults (not glibc)";
#endif
}

}  // namespace sftgo
