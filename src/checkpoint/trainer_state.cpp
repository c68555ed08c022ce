// TrainerState (trainer_state.json) written and validated on read, and the generators' states as hex
// (exact resume of anything drawing random numbers).
#include "sftgo/checkpoint/checkpoint.h"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <mutex>
#include <set>

#include "sftgo/core/error.h"

namespace sftgo::checkpoint {

std::string TrainerState::to_json() const {
  nlohmann::json j = {{"format", "sftgo-trainer-state"},
                      {"version", 1},
                      {"step", step},
                      {"total_steps", total_steps},
                      {"sampler", {{"epoch", sampler_epoch}, {"index", sampler_index}}},
                      {"nan_skips", nan_skips},
                      {"tokens_seen", tokens_seen},
                      {"lambda", lambda},
                      {"elapsed_s", elapsed_s},
                      {"rng_state", rng_state_hex},
                      {"config_yaml", config_yaml},
                      {"world_size", world_size}};
  if (!cuda_rng_states_hex.empty()) j["cuda_rng_states"] = cuda_rng_states_hex;
  if (weights_only) j["weights_only"] = true;
  for (const auto& [key, t] : {std::pair{"best", &best}, std::pair{"early_stopping", &early_stopping}})
    if (*t)
      j[key] = {{"metric", (*t)->metric}, {"value", (*t)->value}, {"step", (*t)->step}, {"bad_evals", (*t)->bad_evals}};
  return j.dump(1) + "\n";
}

namespace {

// An integer field, checked: JSON allows 1.5 or -5 where a count is expected; a resumed run must not
// start from a negative step or a position outside the data (it would train with negative learning
// rates or read out of range).
int64_t count_field(const nlohmann::json& parent, const char* key, const std::string& where,
                    const std::string& source) {
  SFTGO_CHECK(parent.contains(key), ErrorKind::kFormat, source, ": missing field \"", where, "\"");
  const auto& v = parent.at(key);
  SFTGO_CHECK(v.is_number_integer(), ErrorKind::kFormat, source, ": field \"", where, "\" is ", v.dump(),
              ", expected an integer");
  const int64_t x = v.get<int64_t>();
  SFTGO_CHECK(x >= 0, ErrorKind::kFormat, source, ": field \"", where, "\" is ", x, ", expected >= 0");
  return x;
}

double finite_field(const nlohmann::json& j, const char* key, const std::string& source) {
  SFTGO_CHECK(j.contains(key), ErrorKind::kFormat, source, ": missing field \"", key, "\"");
  const auto& v = j.at(key);
  SFTGO_CHECK(v.is_number() && std::isfinite(v.get<double>()), ErrorKind::kFormat, source, ": field \"", key, "\" is ",
              v.dump(), ", expected a finite number");
  return v.get<double>();
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "" when `hex` is a CPU generator state this LibTorch can restore, else what is wrong with it.
std::string rng_state_problem(const std::string& hex) {
  const size_t want = expected_rng_state_hex_size();
  if (hex.size() != want)
    return "has " + std::to_string(hex.size()) + " hex digits, expected exactly " + std::to_string(want) +
           " (the CPU generator state of this LibTorch; truncated or from another version?)";
  for (size_t i = 0; i < hex.size(); ++i)
    if (hex_digit(hex[i]) < 0) return "has a non-hex character at offset " + std::to_string(i);
  return "";
}

// "" when `hex` is a non-empty string of whole bytes in hex digits (at most max_digits), else what is wrong.
std::string hex_bytes_problem(const std::string& hex, size_t max_digits = 4096) {
  if (hex.empty() || hex.size() % 2 != 0 || hex.size() > max_digits)
    return "has " + std::to_string(hex.size()) + " hex digits, expected an even number from 2 to " +
           std::to_string(max_digits);
  for (size_t i = 0; i < hex.size(); ++i)
    if (hex_digit(hex[i]) < 0) return "has a non-hex character at offset " + std::to_string(i);
  return "";
}

// "cuda_rng_states": one generator state per rank of the saving run.
std::vector<std::string> cuda_rng_states_field(const nlohmann::json& v, const TrainerState& s,
                                               const std::string& source) {
  SFTGO_CHECK(v.is_array() && v.size() == static_cast<size_t>(s.world_size), ErrorKind::kFormat, source,
              ": field \"cuda_rng_states\" is not an array of ", s.world_size, " strings (one per rank)");
  std::vector<std::string> out;
  for (size_t r = 0; r < v.size(); ++r) {
    SFTGO_CHECK(v[r].is_string(), ErrorKind::kFormat, source, ": field \"cuda_rng_states\"[", r, "] is ",
                v[r].dump(), ", expected a hex string");
    out.push_back(v[r].get<std::string>());
    const std::string p = hex_bytes_problem(out.back());
    SFTGO_CHECK(p.empty(), ErrorKind::kFormat, source, ": field \"cuda_rng_states\"[", r, "] ", p);
  }
  return out;
}

// "best" / "early_stopping": {"metric", "value", "step" (-1: none yet), "bad_evals"}.
TrackedBest tracked_field(const nlohmann::json& v, const std::string& key, const std::string& source) {
  SFTGO_CHECK(v.is_object() && v.contains("metric") && v["metric"].is_string(), ErrorKind::kFormat, source,
              ": field \"", key, "\" is not an object with a string \"metric\"");
  TrackedBest t;
  t.metric = v["metric"].get<std::string>();
  t.value = finite_field(v, "value", source);
  t.bad_evals = count_field(v, "bad_evals", key + ".bad_evals", source);
  SFTGO_CHECK(v.contains("step") && v["step"].is_number_integer() && v["step"].get<int64_t>() >= -1,
              ErrorKind::kFormat, source, ": field \"", key, ".step\" is ", v.value("step", nlohmann::json()).dump(),
              ", expected an integer >= -1");
  t.step = v["step"].get<int64_t>();
  return t;
}

}  // namespace

size_t expected_rng_state_hex_size() {
  static const size_t n = cpu_rng_state_hex().size();
  return n;
}

TrainerState TrainerState::from_json(const std::string& text, const std::string& source) {
  nlohmann::json j;
  // A key given twice in one object: JSON leaves its meaning open (the parser keeps the last), and a
  // hand edit that adds a second "step" must not resume from whichever one wins.
  std::vector<std::set<std::string>> keys;  // per open object
  std::string duplicate;
  auto track = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) keys.emplace_back();
    if (ev == E::object_end && !keys.empty()) keys.pop_back();
    if (ev == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(text, track);
  } catch (const nlohmann::json::exception& e) {
    SFTGO_FAIL(ErrorKind::kFormat, source, ": not valid JSON (", e.what(), ")");
  }
  SFTGO_CHECK(duplicate.empty(), ErrorKind::kFormat, source, ": field \"", duplicate,
              "\" appears twice in one object; each field must be given once");
  SFTGO_CHECK(j.is_object() && j.value("format", "") == "sftgo-trainer-state", ErrorKind::kFormat, source,
              ": not an sftgo trainer state (expected \"format\": \"sftgo-trainer-state\")");
  // Version 1 is the only layout there is; a newer one may mean fields this reader would misread.
  SFTGO_CHECK(!j.contains("version") || (j["version"].is_number_integer() && j["version"].get<int64_t>() == 1),
              ErrorKind::kFormat, source, ": field \"version\" is ", j.value("version", nlohmann::json()).dump(),
              ", expected 1 (the only trainer-state version this sftgo-train reads; written by a newer one?)");
  TrainerState s;
  s.step = count_field(j, "step", "step", source);
  s.total_steps = count_field(j, "total_steps", "total_steps", source);
  SFTGO_CHECK(s.step <= s.total_steps, ErrorKind::kFormat, source, ": field \"step\" is ", s.step,
              ", past \"total_steps\" ", s.total_steps);
  SFTGO_CHECK(j.contains("sampler") && j["sampler"].is_object(), ErrorKind::kFormat, source,
              ": missing field \"sampler\" (an object with \"epoch\" and \"index\")");
  s.sampler_epoch = count_field(j["sampler"], "epoch", "sampler.epoch", source);
  s.sampler_index = count_field(j["sampler"], "index", "sampler.index", source);
  s.nan_skips = count_field(j, "nan_skips", "nan_skips", source);
  s.tokens_seen = count_field(j, "tokens_seen", "tokens_seen", source);
  s.lambda = finite_field(j, "lambda", source);
  s.elapsed_s = finite_field(j, "elapsed_s", source);
  SFTGO_CHECK(s.elapsed_s >= 0, ErrorKind::kFormat, source, ": field \"elapsed_s\" is ", s.elapsed_s,
              ", expected >= 0");
  const int64_t world = count_field(j, "world_size", "world_size", source);
  SFTGO_CHECK(world >= 1 && world <= (int64_t{1} << 20), ErrorKind::kFormat, source, ": field \"world_size\" is ",
              world, ", expected 1 .. 1048576");
  s.world_size = static_cast<int>(world);
  SFTGO_CHECK(j.contains("rng_state") && j["rng_state"].is_string(), ErrorKind::kFormat, source,
              ": missing field \"rng_state\" (a hex string)");
  s.rng_state_hex = j["rng_state"].get<std::string>();
  const std::string rng = rng_state_problem(s.rng_state_hex);
  SFTGO_CHECK(rng.empty(), ErrorKind::kFormat, source, ": field \"rng_state\" ", rng);
  SFTGO_CHECK(j.contains("config_yaml") && j["config_yaml"].is_string(), ErrorKind::kFormat, source,
              ": missing field \"config_yaml\" (a string)");
  s.config_yaml = j["config_yaml"].get<std::string>();
  if (j.contains("cuda_rng_states")) s.cuda_rng_states_hex = cuda_rng_states_field(j["cuda_rng_states"], s, source);
  if (j.contains("weights_only")) {
    SFTGO_CHECK(j["weights_only"].is_boolean(), ErrorKind::kFormat, source, ": field \"weights_only\" is ",
                j["weights_only"].dump(), ", expected true or false");
    s.weights_only = j["weights_only"].get<bool>();
  }
  if (j.contains("best")) s.best = tracked_field(j["best"], "best", source);
  if (j.contains("early_stopping")) s.early_stopping = tracked_field(j["early_stopping"], "early_stopping", source);
  return s;
}

namespace {

std::string bytes_to_hex(const at::Tensor& state) {  // [n] uint8, CPU
  const auto* p = state.data_ptr<uint8_t>();
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(state.numel() * 2);
  for (int64_t i = 0; i < state.numel(); ++i) {
    out += kHex[p[i] >> 4];
    out += kHex[p[i] & 15];
  }
  return out;
}

at::Tensor hex_to_bytes(const std::string& hex) {  // -> [n] uint8; hex already checked
  at::Tensor state = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  auto* p = state.data_ptr<uint8_t>();
  for (size_t i = 0; i < hex.size() / 2; ++i)
    p[i] = static_cast<uint8_t>(hex_digit(hex[2 * i]) * 16 + hex_digit(hex[2 * i + 1]));
  return state;
}

}  // namespace

std::string cpu_rng_state_hex() { return rng_state_hex(c10::kCPU); }

void set_cpu_rng_state_hex(const std::string& hex) {
  const std::string problem = rng_state_problem(hex);
  SFTGO_CHECK(problem.empty(), ErrorKind::kFormat, "RNG state ", problem);
  set_rng_state_hex(c10::kCPU, hex);
}

std::string rng_state_hex(c10::Device device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return bytes_to_hex(gen.get_state());
}

void set_rng_state_hex(c10::Device device, const std::string& hex) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  const int64_t want = gen.get_state().numel();
  const std::string problem =
      static_cast<int64_t>(hex.size()) != 2 * want
          ? "has " + std::to_string(hex.size()) + " hex digits, expected exactly " + std::to_string(2 * want)
          : hex_bytes_problem(hex, hex.size());
  SFTGO_CHECK(problem.empty(), ErrorKind::kFormat, "RNG state of ", device.str(), " ", problem,
              " (the generator state of this LibTorch; truncated or from another version?)");
  try {
    gen.set_state(hex_to_bytes(hex));
  } catch (const c10::Error& e) {
    SFTGO_FAIL(ErrorKind::kFormat, "RNG state of ", device.str(), ": LibTorch rejects it (",
               e.what_without_backtrace(), ")");
  }
}

}  // namespace sftgo::checkpoint
