// Small string helpers shared by config, data and the CLI (no LibTorch).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sftgo {

// Edit distance, used to suggest the closest valid key or name.
size_t levenshtein(std::string_view a, std::string_view b);
// The candidate closest to `word`, or "" when none is reasonably close.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);
std::vector<std::string> split(std::string_view s, char sep);
std::string join(const std::vector<std::string>& parts, std::string_view sep);
bool starts_with(std::string_view s, std::string_view prefix);
std::string trim(std::string_view s);
// Offset of the first byte that is not valid UTF-8, or std::string::npos when all is valid.
size_t find_invalid_utf8(std::string_view s);
// A short printable excerpt of user data for error messages (escapes control bytes, cuts long text).
std::string excerpt(std::string_view s, size_t max_len = 60);
// Reads a whole file; throws sftgo::Error(kIo) naming the path when it cannot.
std::string read_file(const std::string& path);
// Writes by the one output rule of sftgo/core/files.h (write_output_file): a regular file via a
// temporary file + rename, so a crash never leaves a half-written file; a device or FIFO written through.
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace sftgo
