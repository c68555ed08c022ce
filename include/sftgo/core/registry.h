// A name -> entry table behind a mutex: the one shape of sftgo's extension points (update rules,
// precision policies, grouping functions). Each registry keeps its own wording for its errors.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {

// What a registry's errors say, so every extension point keeps the messages its users know.
struct RegistryWords {
  std::string incomplete;  // kInternal, add() without a name or a usable entry: "an update rule needs a name and a factory"
  std::string noun;        // kInternal, "<noun> '<name>' is already registered"
  std::string unknown;     // kConfig, "<unknown> '<name>'; registered: a, b" (name the config key)
  std::string hint;        // the hint of that kConfig error when no registered name is close
};

template <class Entry>
class NamedRegistry {
 public:
  // Whether an entry can serve: by default an entry that tests as bool (a std::function) must be set.
  using Check = std::function<bool(const Entry&)>;

  explicit NamedRegistry(RegistryWords words, Check complete = &is_set) : words_(std::move(words)),
                                                                          complete_(std::move(complete)) {}

  // Refuses (kInternal) an empty name, an incomplete entry or a name already taken. on_accept runs
  // under the lock after those checks and before the entry is stored, so if it throws nothing is added.
  void add(const std::string& name, Entry entry, const std::function<void(const Entry&)>& on_accept = {}) {
    std::lock_guard lock(mu_);
    SFTGO_CHECK(!name.empty() && complete_(entry), ErrorKind::kInternal, words_.incomplete);
    SFTGO_CHECK(!entries_.count(name), ErrorKind::kInternal, words_.noun, " '", name, "' is already registered");
    if (on_accept) on_accept(entry);
    entries_.emplace(name, std::move(entry));
  }

  std::vector<std::string> names() const {  // sorted
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }

  // A copy, so the caller runs the entry outside the lock (a factory may itself look up a registry).
  std::optional<Entry> find(const std::string& name) const {
    std::lock_guard lock(mu_);
    auto it = entries_.find(name);
    return it == entries_.end() ? std::nullopt : std::optional<Entry>(it->second);
  }

  // The entry of `name`, or a kConfig error listing the registered names and the closest one.
  Entry get(const std::string& name) const {
    auto entry = find(name);
    if (!entry) fail_unknown(name);
    return std::move(*entry);
  }

  // Fails as get() does when `name` is not registered.
  void check(const std::string& name) const {
    if (!find(name)) fail_unknown(name);
  }

 private:
  static bool is_set(const Entry& entry) {
    if constexpr (std::is_constructible_v<bool, const Entry&>)
      return static_cast<bool>(entry);
    else
      return true;
  }

  [[noreturn]] void fail_unknown(const std::string& name) const {
    const auto registered = names();
    const auto close = closest_match(name, registered);
    SFTGO_FAIL_HINT(ErrorKind::kConfig, close.empty() ? words_.hint : "did you mean '" + close + "'?", words_.unknown,
                    " '", name, "'; registered: ", join(registered, ", "));
  }

  RegistryWords words_;
  Check complete_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
};

}  // namespace sftgo
