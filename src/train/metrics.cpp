#include "sftgo/train/metrics.h"

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "sftgo/core/error.h"
#include "sftgo/core/files.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"
#include "sftgo/model/llama.h"

namespace sftgo::train {

namespace {
// JSON has no NaN/Inf: write them as null so every line stays parseable.
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
}  // namespace

std::string StepMetrics::to_json() const {
  nlohmann::json j = {{"step", step},
                      {"epoch", num(epoch)},
                      {"loss", num(loss)},
                      {"loss_ce", num(loss_ce)},
                      {"loss_imp", num(loss_imp)},
                      {"loss_unimp", num(loss_unimp)},
                      {"worst_group", worst_group},
                      {"count_imp", count_imp},
                      {"count_unimp", count_unimp},
                      {"lambda", num(lambda)},
                      {"lr", num(lr)},
                      {"grad_norm", num(grad_norm)},
                      {"tokens", tokens},
                      {"trained_tokens", trained_tokens},
                      {"tokens_per_s", num(tokens_per_s)},
                      {"step_s", num(step_s)},
                      {"elapsed_s", num(elapsed_s)},
                      {"skipped", skipped}};
  if (mfu >= 0) j["mfu"] = num(mfu);
  if (gpu_mem_allocated_gb >= 0) j["gpu_mem_allocated_gb"] = num(gpu_mem_allocated_gb);
  if (gpu_mem_reserved_gb >= 0) j["gpu_mem_reserved_gb"] = num(gpu_mem_reserved_gb);
  if (comm_s >= 0) j["comm_s"] = num(comm_s);
  return j.dump();
}

std::string EvalMetrics::to_json() const {
  nlohmann::json j = {{"step", step},
                      {"eval_loss", num(loss)},
                      {"eval_loss_ce", num(loss_ce)},
                      {"eval_loss_imp", num(loss_imp)},
                      {"eval_loss_unimp", num(loss_unimp)},
                      {"eval_tokens", tokens},
                      {"eval_s", num(seconds)}};
  for (const auto& [name, value] : tasks) j[name] = num(value);
  return j.dump();
}

std::vector<std::string> read_metrics_lines(const std::string& path) {
  const std::string text = read_file(path);
  auto lines = split(text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();  // the final newline
  if (!text.empty() && text.back() != '\n' && !lines.empty()) {
    auto j = nlohmann::json::parse(lines.back(), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      log_warn("{}:{}: ignoring an incomplete last line ({} bytes, no newline: the writer was interrupted)", path,
               lines.size(), lines.back().size());
      lines.pop_back();
    }
  }
  return lines;
}

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step) : path_(path) {
  namespace fs = std::filesystem;
  if (fs::path(path).has_parent_path()) {
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    SFTGO_CHECK_HINT(!ec, ErrorKind::kIo, write_error_hint(ec.value(), path), fs::path(path).parent_path().string(),
                     ": cannot create the directory for ", fs::path(path).filename().string(), ": ", ec.message());
  }
  if (keep_through_step >= 0 && fs::exists(path)) {
    std::string kept;
    for (const auto& line : read_metrics_lines(path)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<int64_t>() <= keep_through_step)
        kept += line + "\n";
    }
    write_file_atomic(path, kept);
  } else if (keep_through_step < 0) {
    write_file_atomic(path, "");  // a fresh run starts a fresh log
  }
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(err, path), path, ": cannot open for appending (",
                    std::strerror(err), ")");
  }
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::write(const StepMetrics& m) { write_line(m.to_json()); }
void MetricsLog::write(const EvalMetrics& m) { write_line(m.to_json()); }

void MetricsLog::write_line(const std::string& json) {
  const std::string line = json + "\n";
  struct stat st {};
  const off_t before = ::fstat(fd_, &st) == 0 ? st.st_size : -1;
  // No stdio buffer: a line is on disk (in the page cache) when write() returns, and a failed one
  // cannot be flushed again half-way later by fclose.
  ssize_t n;
  do {
    n = ::write(fd_, line.data(), line.size());
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(line.size())) return;
  const int err = n < 0 ? errno : ENOSPC;  // short write: the filesystem ran out of room mid-line
  if (before >= 0 && ::ftruncate(fd_, before) != 0)
    log_warn("{}: could not cut a partial line back off ({})", path_, std::strerror(errno));
  SFTGO_FAIL_HINT(ErrorKind::kIo, write_error_hint(err, path_), path_,
                  ": cannot append the metrics of this step: ", std::strerror(err));
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  auto total = static_cast<int64_t>(std::llround(s));
  std::ostringstream os;
  if (total >= 3600)
    os << total / 3600 << "h" << (total % 3600) / 60 << "m";
  else if (total >= 60)
    os << total / 60 << "m" << total % 60 << "s";
  else
    os << total << "s";
  return os.str();
}

std::string progress_line(const StepMetrics& m, int64_t total_steps, bool with_lambda) {
  char buf[320];
  const double remaining =
      m.step > 0 ? m.elapsed_s / static_cast<double>(m.step) * static_cast<double>(total_steps - m.step) : -1;
  char gpu[64] = "";
  if (m.gpu_mem_reserved_gb >= 0)
    std::snprintf(gpu, sizeof gpu, " | GPU %.1f/%.1f GB", m.gpu_mem_allocated_gb, m.gpu_mem_reserved_gb);
  char lambda[32] = "";
  if (with_lambda) std::snprintf(lambda, sizeof lambda, " | lambda %.2f", m.lambda);
  std::snprintf(buf, sizeof buf,
                "step %lld/%lld | loss %.4f | ce %.4f | imp %.3f | unimp %.3f%s | lr %.2e | %.0f tok/s%s | ETA %s%s",
                static_cast<long long>(m.step), static_cast<long long>(total_steps), m.loss, m.loss_ce, m.loss_imp,
                m.loss_unimp, lambda, m.lr, m.tokens_per_s, gpu, format_duration(remaining).c_str(),
                m.skipped ? " | SKIPPED (non-finite)" : "");
  return buf;
}

std::string progress_bar(int64_t step, int64_t total_steps, int width) {
  const double frac =
      total_steps > 0 ? std::clamp(static_cast<double>(step) / static_cast<double>(total_steps), 0.0, 1.0) : 0.0;
  const int w = std::max(width, 0);  // a bounded width keeps GCC's string-overflow analysis quiet too
  const int filled = std::clamp(static_cast<int>(frac * w), 0, w);
  char pct[8];
  std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(frac * 100.0));
  std::string bar = "[";
  bar.append(static_cast<size_t>(filled), '#').append(static_cast<size_t>(w - filled), '.');
  return bar + "] " + pct;
}

FlopsModel flops_model(const model::LlamaModelImpl& model) {
  FlopsModel f;
  const model::LlamaConfig& c = model.config();
  f.attention = static_cast<double>(c.num_hidden_layers) * static_cast<double>(c.num_attention_heads) *
                static_cast<double>(c.head_dim);
  const bool tied = !model.lm_head;
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    const at::Tensor& p = item.value();
    if (p.dim() != 2) continue;  // RMSNorm scales: element-wise
    const bool embedding = starts_with(name, "embed_tokens.");
    if (embedding && !tied) continue;  // a lookup, no matmul
    // The LM head (the embedding table when tied) and its adapters see only the trained positions.
    const bool head = embedding || starts_with(name, "lm_head.");
    const double n = static_cast<double>(p.numel());
    double& slot = head ? (p.requires_grad() ? f.head_trained : f.head_frozen)
                        : (p.requires_grad() ? f.token_trained : f.token_frozen);
    slot += n;
  }
  return f;
}

double training_flops(const FlopsModel& f, double tokens, double trained, double pairs) {
  return (6.0 * f.token_trained + 4.0 * f.token_frozen) * tokens +
         (6.0 * f.head_trained + 4.0 * f.head_frozen) * trained + 12.0 * f.attention * pairs;
}

double model_flops_utilization(double flops, double seconds, int world, double peak_flops) {
  if (!(peak_flops > 0) || !(seconds > 0) || world < 1) return -1;
  return flops / seconds / (static_cast<double>(world) * peak_flops);
}

}  // namespace sftgo::train
