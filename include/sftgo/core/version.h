// Build identity printed by `sftgo-train --version` and saved with every run.
#pragma once

namespace sftgo {
const char* version_string();  // "0.1.0"
const char* git_hash();        // short hash at configure time, "unknown" outside a checkout
bool built_with_cuda();        // CUDA kernels compiled in
const char* nccl_version();    // NCCL headers the NCCL process group was compiled with ("2.28.9"), or "none"
}  // namespace sftgo
