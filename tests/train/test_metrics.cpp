#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/metrics.h"
#include "sftgo/train/plot.h"

namespace sftgo::train {
namespace {

TEST(Metrics, JsonLinesStayParseableWithNonFiniteValues) {
  StepMetrics m;
  m.step = 3;
  m.loss = NAN;
  m.grad_norm = INFINITY;
  auto j = nlohmann::json::parse(m.to_json());
  EXPECT_EQ(j["step"], 3);
  EXPECT_TRUE(j["loss"].is_null());
  EXPECT_TRUE(j["grad_norm"].is_null());
  EXPECT_FALSE(j.contains("mfu"));  // only reported on GPU
}

TEST(Metrics, ResumeDropsLinesPastTheCheckpointAndPlotReadsThem) {
  auto dir = std::filesystem::temp_directory_path() / "sftgo_test_metrics";
  std::filesystem::remove_all(dir);
  const std::string path = (dir / "metrics.jsonl").string();
  {
    MetricsLog log(path, -1);
    for (int s = 1; s <= 5; ++s) {
      StepMetrics m;
      m.step = s;
      m.loss = 3.0 - 0.1 * s;
      m.loss_imp = 4.0 - 0.2 * s;
      m.loss_unimp = 2.0;
      m.loss_ce = 2.5;
      log.write(m);
    }
  }
  {
    MetricsLog log(path, 3);  // resumed from the step-3 checkpoint
    StepMetrics m;
    m.step = 4;
    log.write(m);
  }
  auto lines = split(trim(read_file(path)), '\n');
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(nlohmann::json::parse(lines.back())["step"], 4);
  std::string svg = plot_metrics_svg(path, "t");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("L_imp"), std::string::npos);
  write_file_atomic((dir / "bad.jsonl").string(), "{\"step\": 1}\nnot json\n");
  try {
    plot_metrics_svg((dir / "bad.jsonl").string(), "t");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Metrics, AMetricsLogCutMidLineStillReadsAndResumes) {
  // What a writer killed mid-line (or an older version on a full disk) leaves: a last line without
  // its newline. The reader drops it, plot draws the rest, a resume keeps the complete lines.
  auto dir = std::filesystem::temp_directory_path() / "sftgo_test_metrics_cut";
  std::filesystem::remove_all(dir);
  const std::string path = (dir / "metrics.jsonl").string();
  const std::string complete =
      "{\"step\": 1, \"loss_ce\": 2.5, \"loss_imp\": 3.0, \"loss_unimp\": 2.0}\n"
      "{\"step\": 2, \"loss_ce\": 2.4, \"loss_imp\": 2.9, \"loss_unimp\": 1.9}\n";
  write_file_atomic(path, complete + "{\"step\": 3, \"loss_ce\": 2.");
  EXPECT_EQ(read_metrics_lines(path).size(), 2u);
  EXPECT_NE(plot_metrics_svg(path, "t").find("<svg"), std::string::npos);
  { MetricsLog log(path, 5); }
  EXPECT_EQ(read_file(path), complete);
  // A complete last line without a newline is kept.
  write_file_atomic(path, "{\"step\": 1}\n{\"step\": 2}");
  EXPECT_EQ(read_metrics_lines(path), (std::vector<std::string>{"{\"step\": 1}", "{\"step\": 2}"}));
  std::filesystem::remove_all(dir);
}

TEST(Metrics, ProgressLineAndDurations) {
  StepMetrics m;
  m.step = 10;
  m.elapsed_s = 20;
  EXPECT_NE(progress_line(m, 20).find("step 10/20"), std::string::npos);
  EXPECT_NE(progress_line(m, 20).find("ETA 20s"), std::string::npos);
  m.lambda = 0.25;
  EXPECT_NE(progress_line(m, 20).find(" | lambda 0.25 | lr "), std::string::npos);
  // ce and rho1 runs: no lambda, the rest unchanged.
  EXPECT_EQ(progress_line(m, 20, false).find("lambda"), std::string::npos);
  EXPECT_NE(progress_line(m, 20, false).find(" | unimp 0.000 | lr "), std::string::npos);
  EXPECT_EQ(progress_bar(10, 20, 10), "[#####.....]  50%");
  EXPECT_EQ(progress_bar(20, 20, 4), "[####] 100%");
  EXPECT_EQ(progress_bar(0, 0, 4), "[....]   0%");
  EXPECT_EQ(format_duration(3725), "1h2m");
  EXPECT_EQ(format_duration(-1), "?");
}

}  // namespace
}  // namespace sftgo::train
