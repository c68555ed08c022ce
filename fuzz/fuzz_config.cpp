// libFuzzer target for the YAML config loader. The first input byte picks the mode:
//   even: the rest is a config file's text (load_config_text);
//   odd:  the rest is `--set` overrides, one per line, applied to the defaults.
// Loading must succeed or throw sftgo::Error, and a loaded config's resolved YAML must load back to
// the same YAML (what resolved_config.yaml promises).
// Build and run: scripts/fuzz_config.sh
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <vector>

#include "sftgo/config/config.h"
#include "sftgo/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    sftgo::LoadedConfig c;
    if (data[0] & 1) {
      std::vector<std::string> overrides;
      size_t begin = 0;
      while (begin <= rest.size() && overrides.size() < 64) {
        size_t end = rest.find('\n', begin);
        if (end == std::string::npos) end = rest.size();
        overrides.push_back(rest.substr(begin, end - begin));
        begin = end + 1;
      }
      c = sftgo::load_config_text("", "fuzz.yaml", overrides);
    } else {
      c = sftgo::load_config_text(rest, "fuzz.yaml");
    }
    const std::string yaml = sftgo::config_to_yaml(c.config);
    sftgo::LoadedConfig back;
    try {
      back = sftgo::load_config_text(yaml, "resolved.yaml");
    } catch (const sftgo::Error& e) {
      std::fprintf(stderr, "resolved YAML does not load back: %s\n%s\n", e.what(), yaml.c_str());
      std::abort();
    }
    if (sftgo::config_to_yaml(back.config) != yaml) {
      std::fprintf(stderr, "resolved YAML changes on reload:\n%s\n", yaml.c_str());
      std::abort();
    }
  } catch (const sftgo::Error&) {
  }
  return 0;
}
