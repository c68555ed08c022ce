#include "sftgo/train/plot.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::train {
namespace {

struct Series {
  const char* key;
  const char* label;
  const char* colour;
  std::vector<std::pair<double, double>> points;
};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

}  // namespace

std::string plot_metrics_svg(const std::string& path, const std::string& title) {
  std::vector<Series> series = {{"loss_imp", "L_imp (important)", "#d62728", {}},
                                {"loss_unimp", "L_unimp (rest)", "#1f77b4", {}},
                                {"loss_ce", "L_CE (all)", "#2ca02c", {}},
                                {"loss", "objective", "#7f7f7f", {}}};
  const auto lines = split(read_file(path), '\n');
  for (size_t i = 0; i < lines.size(); ++i) {
    if (trim(lines[i]).empty()) continue;
    auto j = nlohmann::json::parse(lines[i], nullptr, false);
    SFTGO_CHECK(j.is_object() && j.contains("step"), ErrorKind::kFormat, path, ":", i + 1,
                ": expected a JSON object with \"step\" (a metrics.jsonl line)");
    if (j.value("skipped", false)) continue;
    const double step = j["step"].get<double>();
    for (auto& s : series)
      if (j.contains(s.key) && j[s.key].is_number()) s.points.emplace_back(step, j[s.key].get<double>());
  }
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      x0 = std::min(x0, x); x1 = std::max(x1, x);
      y0 = std::min(y0, y); y1 = std::max(y1, y);
    }
  SFTGO_CHECK(std::isfinite(x0), ErrorKind::kData, path, ": no steps with loss values to plot");
  if (x1 == x0) x1 = x0 + 1;
  y0 = std::min(0.0, y0);
  if (y1 <= y0) y1 = y0 + 1;
  const double W = 760, H = 440, L = 70, R = 190, T = 40, B = 50;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (y - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << L << "\" y=\"24\" font-size=\"15\">" << title << "</text>\n";
  for (int k = 0; k <= 5; ++k) {  // grid and tick labels
    double y = y0 + (y1 - y0) * k / 5, x = x0 + (x1 - x0) * k / 5;
    os << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
       << "\" stroke=\"#ddd\"/><text x=\"" << L - 8 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << fmt(y)
       << "</text>\n<text x=\"" << px(x) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << fmt(std::round(x))
       << "</text>\n";
  }
  os << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">optimizer step</text>\n"
     << "<text x=\"16\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 16 " << (T + H - B) / 2
     << ")\" text-anchor=\"middle\">mean cross-entropy</text>\n";
  int row = 0;
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    os << "<polyline fill=\"none\" stroke=\"" << s.colour << "\" stroke-width=\"1.8\" points=\"";
    for (auto [x, y] : s.points) os << px(x) << "," << py(y) << " ";
    os << "\"/>\n";
    const double ly = T + 10 + 20 * row++;
    os << "<line x1=\"" << W - R + 15 << "\" x2=\"" << W - R + 40 << "\" y1=\"" << ly << "\" y2=\"" << ly
       << "\" stroke=\"" << s.colour << "\" stroke-width=\"2\"/><text x=\"" << W - R + 46 << "\" y=\"" << ly + 4
       << "\">" << s.label << "</text>\n";
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace sftgo::train
