// Wall-clock timers: a stopwatch and named accumulators for per-phase step timing.
#pragma once

#include <chrono>
#include <map>
#include <string>

namespace sftgo {

class Timer {
 public:
  Timer() : start_(Clock::now()) {}
  void reset() { start_ = Clock::now(); }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  double millis() const { return seconds() * 1e3; }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

// Accumulates seconds per phase name ("data", "forward", ...); the trainer reports and resets it.
class PhaseTimes {
 public:
  void add(const std::string& phase, double seconds) { totals_[phase] += seconds; }
  const std::map<std::string, double>& totals() const { return totals_; }
  void clear() { totals_.clear(); }

 private:
  std::map<std::string, double> totals_;
};

// Adds the lifetime of the scope to one phase of a PhaseTimes.
class ScopedPhase {
 public:
  ScopedPhase(PhaseTimes& times, std::string phase) : times_(times), phase_(std::move(phase)) {}
  ~ScopedPhase() { times_.add(phase_, timer_.seconds()); }
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;

 private:
  PhaseTimes& times_;
  std::string phase_;
  Timer timer_;
};

}  // namespace sftgo
