// `plot`: what a reader of the figure sees (title, ticks, legend, curves), read back from the SVG,
// and the PNG's size. tests/python/test_plot_runs.py renders real runs through the binary.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"
#include "sftgo/train/plot.h"

namespace sftgo::train {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) : path(fs::temp_directory_path() / name) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A metrics.jsonl of `steps` training lines (loss_ce = f(step)) and eval lines every `eval_every`.
std::string write_metrics(const fs::path& dir, int steps, int eval_every, double (*ce)(int),
                          const std::string& objective_field = "same") {
  fs::create_directories(dir);
  std::string text;
  for (int s = 1; s <= steps; ++s) {
    const double c = ce(s);
    const double loss = objective_field == "same" ? c : c + 0.5;
    text += "{\"step\": " + std::to_string(s) + ", \"loss\": " + std::to_string(loss) +
            ", \"loss_ce\": " + std::to_string(c) + ", \"loss_imp\": " + std::to_string(c + 0.3) +
            ", \"loss_unimp\": " + std::to_string(c - 0.2) + ", \"count_imp\": 5, \"count_unimp\": 9}\n";
    if (eval_every > 0 && s % eval_every == 0)
      text += "{\"step\": " + std::to_string(s) + ", \"eval_loss_ce\": " + std::to_string(c + 0.1) +
              ", \"eval_loss_imp\": " + std::to_string(c + 0.4) + ", \"eval_loss_unimp\": " + std::to_string(c) + "}\n";
  }
  const std::string path = (dir / "metrics.jsonl").string();
  write_file_atomic(path, text);
  return path;
}

double falling(int s) { return 3.0 * std::exp(-s / 15.0) + 1.0 + 0.05 * std::sin(s); }

std::vector<std::string> texts(const std::string& svg, const std::string& anchor) {
  std::vector<std::string> out;
  const std::regex re("text-anchor=\"" + anchor + "\">([^<]*)</text>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

// The x-axis labels of each panel (they restart at 0 in the next panel).
std::vector<std::vector<std::string>> x_ticks(const std::string& svg) {
  std::vector<std::vector<std::string>> panels;
  for (const auto& t : texts(svg, "middle")) {
    if (t == "optimizer step" || t.find("cross-entropy") != std::string::npos) continue;
    if (t == "0" || panels.empty()) panels.emplace_back();
    panels.back().push_back(t);
  }
  return panels;
}

std::string plot(const std::vector<PlotRun>& runs, double smooth = 0.6, bool objective = false) {
  PlotOptions o;
  o.smooth = smooth;
  o.objective = objective;
  return plot_runs_svg(runs, o);
}

TEST(Plot, StepAxisEndsAtTheFirstTickAfterTheLastStepWithIntegerTicks) {
  TempDir tmp("sftgo_test_plot_axis");
  // 69 steps: 0..70 by 10 (not 0..80 by 20); short runs: integer ticks only (no 1.5, 2.5).
  const std::vector<std::pair<int, std::vector<std::string>>> cases = {
      {69, {"0", "10", "20", "30", "40", "50", "60", "70"}},
      {3, {"0", "1", "2", "3"}},
      {2, {"0", "1", "2"}},
      {5, {"0", "1", "2", "3", "4", "5"}},
      {137, {"0", "20", "40", "60", "80", "100", "120", "140"}},
      {1000, {"0", "200", "400", "600", "800", "1000"}}};
  for (const auto& [steps, want] : cases) {
    const auto path = write_metrics(tmp.path / std::to_string(steps), steps, 0, falling);
    const auto panels = x_ticks(plot({{"r", path, "sftgo"}}));
    ASSERT_EQ(panels.size(), 1u) << steps;
    EXPECT_EQ(panels[0], want) << steps << " steps";
  }
}

TEST(Plot, HeldOutPanelSharesTheTrainingStepAxis) {
  TempDir tmp("sftgo_test_plot_heldout");
  const auto path = write_metrics(tmp.path, 69, 20, falling);  // evals at 20, 40, 60 only
  const std::string svg = plot({{"r", path, "ce"}});
  const auto panels = x_ticks(svg);
  ASSERT_EQ(panels.size(), 2u);
  EXPECT_EQ(panels[0], panels[1]);  // both 0..70, although the held-out points end at 60
  EXPECT_EQ(panels[1].back(), "70");
  // The loss ticks of a panel are rounded to the data: the first tick at or below the lowest value,
  // the last at or above the highest, and not a whole tick step beyond either.
  std::vector<double> y;
  for (const auto& t : texts(svg, "end")) y.push_back(std::stod(t));
  ASSERT_GE(y.size(), 4u);
  const double lo = falling(69) - 0.2, hi = falling(1) + 0.3;  // L_unimp's lowest, L_imp's highest
  size_t n = 0;
  while (n + 1 < y.size() && y[n + 1] > y[n]) ++n;  // the training panel's ticks
  const double step = y[1] - y[0];
  EXPECT_LE(y[0], lo + 1e-6);
  EXPECT_GT(y[0], lo - step);
  EXPECT_GE(y[n], hi - 1e-6);
  EXPECT_LT(y[n], hi + step);
}

TEST(Plot, TitleNamesTheMethodFromTheRunsConfig) {
  TempDir tmp("sftgo_test_plot_title");
  write_metrics(tmp.path / "sft", 10, 0, falling);
  write_file_atomic((tmp.path / "sft" / "resolved_config.yaml").string(),
                    "run:\n  name: x\nloss:\n  objective: ce\n  lambda: 0.5\n");
  write_metrics(tmp.path / "go", 10, 0, falling, "own");
  write_file_atomic((tmp.path / "go" / "resolved_config.yaml").string(), "loss:\n  objective: sftgo\n");
  write_metrics(tmp.path / "plain", 10, 0, falling);  // no resolved_config.yaml
  const PlotRun sft = plot_run_from_dir((tmp.path / "sft").string());
  const PlotRun go = plot_run_from_dir((tmp.path / "go").string(), "SFT-GO (TF-IDF)");
  const PlotRun plain = plot_run_from_dir((tmp.path / "plain/").string());
  EXPECT_EQ(sft.objective, "ce");
  EXPECT_EQ(sft.label, "sft");
  EXPECT_EQ(go.label, "SFT-GO (TF-IDF)");
  EXPECT_EQ(plain.label, "plain");
  EXPECT_EQ(plain.objective, "");
  EXPECT_EQ(default_plot_title({sft}), "SFT losses by token group: sft");
  EXPECT_EQ(default_plot_title({go}), "SFT-GO losses by token group: SFT-GO (TF-IDF)");
  EXPECT_EQ(default_plot_title({sft, go}), "SFT vs SFT-GO: losses by token group");
  EXPECT_EQ(default_plot_title({plain}), "Losses by token group: plain");
  const std::string svg = plot({sft});
  EXPECT_NE(svg.find("font-size=\"15\">SFT losses by token group: sft</text>"), std::string::npos);
  EXPECT_EQ(svg.find("SFT-GO"), std::string::npos);  // a plain SFT run is not called SFT-GO
  // --title and labels (escaped) appear as given.
  PlotOptions o;
  o.title = "Figure 2 <draft>";
  const std::string titled = plot_runs_svg({sft, go}, o);
  EXPECT_NE(titled.find(">Figure 2 &lt;draft&gt;</text>"), std::string::npos);
  EXPECT_NE(titled.find(">SFT-GO (TF-IDF)</text>"), std::string::npos);
  EXPECT_NE(titled.find(">sft</text>"), std::string::npos);
}

// Polylines as (colour, points in pixels).
std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> polylines(const std::string& svg) {
  std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> out;
  const std::regex re("<polyline fill=\"none\" stroke=\"(#[0-9a-f]{6})\"[^>]*points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    std::vector<std::pair<double, double>> pts;
    for (const auto& xy : split(trim((*it)[2].str()), ' ')) {
      const auto c = split(xy, ',');
      pts.emplace_back(std::stod(c[0]), std::stod(c[1]));
    }
    out.emplace_back((*it)[1], pts);
  }
  return out;
}

TEST(Plot, ObjectiveOfAnSftRunIsLceAndIsNotDrawnOverIt) {
  TempDir tmp("sftgo_test_plot_objective");
  const auto sft = write_metrics(tmp.path / "sft", 20, 0, falling);         // loss == loss_ce
  const auto go = write_metrics(tmp.path / "go", 20, 0, falling, "own");    // loss != loss_ce
  auto greys = [](const std::string& svg) {
    int n = 0;
    for (const auto& [c, p] : polylines(svg)) n += c == "#7f7f7f";
    return n;
  };
  // Known from the config, or seen in the data when there is none: no grey line over L_CE.
  for (const char* objective : {"ce", ""}) {
    const std::string svg = plot({{"sft", sft, objective}}, 0.6, true);
    EXPECT_EQ(greys(svg), 0) << objective;
    EXPECT_NE(svg.find(">objective = L_CE (SFT)</text>"), std::string::npos) << objective;
  }
  EXPECT_EQ(greys(plot({{"go", go, "sftgo"}}, 0.6, true)), 1);
  EXPECT_EQ(greys(plot({{"go", go, "sftgo"}}, 0.6, false)), 0);
  const std::string both = plot({{"sft", sft, "ce"}, {"go", go, "sftgo"}}, 0.6, true);
  EXPECT_EQ(greys(both), 1);
  EXPECT_NE(both.find(">SFT runs: objective = L_CE</text>"), std::string::npos);
}

TEST(Plot, SmoothingIsACentredLocalLinearFitWithoutLag) {
  TempDir tmp("sftgo_test_plot_smooth");
  // A straight line: a one-sided EMA lags it by a / (1 - a) steps; the centred fit is exact.
  const auto line = write_metrics(tmp.path / "line", 30, 0, [](int s) { return 5.0 - 0.1 * s; });
  auto lines = polylines(plot({{"", line, "ce"}}, 0.8));
  ASSERT_GE(lines.size(), 2u);
  ASSERT_EQ(lines[0].first, "#1f77b4");
  const auto& raw = lines[0].second;
  const auto& smooth = lines[1].second;
  ASSERT_EQ(raw.size(), smooth.size());
  for (size_t i = 0; i < raw.size(); ++i) EXPECT_NEAR(smooth[i].second, raw[i].second, 0.11) << i;  // 0.1 px rounding
  // A noisy curve: against the weighted least-squares fit computed directly at each point, on the
  // raw pixel ys (a fit commutes with the affine value-to-pixel map; 0.1 px = the SVG's rounding, so
  // 0.2 px allows both curves' rounding).
  const auto noisy = write_metrics(tmp.path / "noisy", 40, 0, falling);
  lines = polylines(plot({{"", noisy, "ce"}}, 0.7));
  const auto& r = lines[0].second;
  const auto& s = lines[1].second;
  for (size_t i = 0; i < r.size(); ++i) {
    double s0 = 0, s1 = 0, s2 = 0, t0 = 0, t1 = 0;
    for (size_t j = 0; j < r.size(); ++j) {
      const double u = static_cast<double>(j) - static_cast<double>(i);  // steps j+1 - (i+1)
      const double w = std::pow(0.7, std::abs(u));
      s0 += w, s1 += w * u, s2 += w * u * u, t0 += w * r[j].second, t1 += w * u * r[j].second;
    }
    EXPECT_NEAR(s[i].second, (s2 * t0 - s1 * t1) / (s0 * s2 - s1 * s1), 0.2) << i;
  }
}

TEST(Plot, StepsWithoutTokensOfAGroupAreNotDrawnForIt) {
  TempDir tmp("sftgo_test_plot_empty_group");
  write_file_atomic((tmp.path / "metrics.jsonl").string(),
                    "{\"step\": 1, \"loss_ce\": 2, \"loss_imp\": 3, \"loss_unimp\": 1, \"count_imp\": 4, "
                    "\"count_unimp\": 4}\n"
                    "{\"step\": 2, \"loss_ce\": 1.5, \"loss_imp\": 0, \"loss_unimp\": 1.5, \"count_imp\": 0, "
                    "\"count_unimp\": 4}\n"
                    "{\"step\": 3, \"loss_ce\": 1, \"loss_imp\": 2, \"loss_unimp\": 0.5, \"count_imp\": 4, "
                    "\"count_unimp\": 4}\n");
  for (const auto& [colour, pts] : polylines(plot({{"", (tmp.path / "metrics.jsonl").string(), "ce"}}, 0)))
    EXPECT_EQ(pts.size(), colour == "#ff7f0e" ? 2u : 3u) << colour;  // no L_imp = 0 at step 2
}

TEST(Plot, PngHasTheSvgsSizeTimesTheScale) {
  TempDir tmp("sftgo_test_plot_png");
  const auto path = write_metrics(tmp.path, 30, 10, falling);
  if (!plot_png_supported()) {
    try {
      plot_runs_png({{"r", path, "ce"}}, PlotOptions{});
      FAIL() << "a build without cairo must refuse PNG";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("libcairo2-dev"), std::string::npos) << e.what();
    }
    GTEST_SKIP() << "built without cairo";
  }
  const std::string svg = plot_runs_svg({{"r", path, "ce"}}, PlotOptions{});
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("width=\"([0-9.]+)\" height=\"([0-9.]+)\"")));
  const double w = std::stod(m[1]), h = std::stod(m[2]);
  const std::string png = plot_runs_png({{"r", path, "ce"}}, PlotOptions{}, 2.0);
  ASSERT_GT(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) v = v << 8 | static_cast<unsigned char>(png[at + k]);
    return v;
  };
  EXPECT_EQ(be32(16), static_cast<uint32_t>(std::ceil(2 * w)));
  EXPECT_EQ(be32(20), static_cast<uint32_t>(std::ceil(2 * h)));
  EXPECT_GT(png.size(), 20000u);  // curves, text and ticks, not a blank page (a blank one is ~10 kB)
}

}  // namespace
}  // namespace sftgo::train
