// glibc malloc settings for a training process (see docs/operations.md, "Host memory").
#pragma once

#include <string>

namespace sftgo {

// glibc's mmap threshold starts at 128 KiB and rises to the size of every mmapped block freed (up to
// 32 MiB); blocks below it come from the heap, and freed ones stay with the process (issue #29: ~2.4
// GiB at the Llama-3.2-1B shape). A fixed threshold of kMallocMmapThreshold (which also stops the rise)
// gives every block of 1 MiB or more its own mapping, returned to the system when freed.
//
// Does nothing when SFTGO_MALLOC_TUNING=0, or when the user set MALLOC_MMAP_THRESHOLD_ (glibc reads
// it at start-up; the user's value wins), or on a C library other than glibc. Returns one line for
// the log saying what it did.
std::string tune_malloc_for_training();

inline constexpr int kMallocMmapThreshold = 1 << 20;  // bytes

}  // namespace sftgo
