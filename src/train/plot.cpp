#include "sftgo/train/plot.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>
#include <limits>
#include <sstream>
#include <vector>

#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo::train {
namespace {

struct SeriesDef {
  const char* key;  // metrics.jsonl field of a training line; "eval_" + key on eval lines
  const char* label;
  const char* colour;
};
// The paper's Figure 2 colours: all tokens blue, important orange, unimportant green.
constexpr SeriesDef kSeries[] = {{"loss_ce", "L_CE (all tokens)", "#1f77b4"},
                                 {"loss_imp", "L_imp (important)", "#ff7f0e"},
                                 {"loss_unimp", "L_unimp (rest)", "#2ca02c"}};
constexpr SeriesDef kObjective = {"loss", "objective", "#7f7f7f"};
constexpr const char* kDashes[] = {"", "7,4", "2,3", "9,3,2,3", "4,2,1,2,1,2"};

using Points = std::vector<std::pair<double, double>>;

struct RunData {
  std::string label;
  Points train[3], eval[3], objective;
};

RunData read_run(const PlotRun& run) {
  RunData d;
  d.label = run.label;
  const std::string text = read_file(run.metrics_jsonl);
  const auto lines = split(text, '\n');
  const bool ends_with_newline = !text.empty() && text.back() == '\n';
  for (size_t i = 0; i < lines.size(); ++i) {
    if (trim(lines[i]).empty()) continue;
    auto j = nlohmann::json::parse(lines[i], nullptr, false);
    const bool cut_last_line = i + 1 == lines.size() && !ends_with_newline;
    if (j.is_discarded() && cut_last_line) continue;  // a writer killed mid-line; the resume drops it too
    SFTGO_CHECK(j.is_object() && j.contains("step") && j["step"].is_number(), ErrorKind::kFormat, run.metrics_jsonl,
                ":", i + 1, ": expected a JSON object with a numeric \"step\" (a metrics.jsonl line)");
    if (j.value("skipped", false)) continue;
    const double step = j["step"].get<double>();
    auto take = [&](const std::string& key, Points& out) {
      if (j.contains(key) && j[key].is_number() && std::isfinite(j[key].get<double>()))
        out.emplace_back(step, j[key].get<double>());
    };
    for (int s = 0; s < 3; ++s) {
      take(kSeries[s].key, d.train[s]);
      take(std::string("eval_") + kSeries[s].key, d.eval[s]);
    }
    take(kObjective.key, d.objective);
  }
  return d;
}

// EMA with TensorBoard's debiasing (the first points are not pulled towards 0).
Points smoothed(const Points& p, double a) {
  if (a <= 0) return p;
  Points out;
  double s = 0, w = 0;
  for (auto [x, y] : p) {
    s = a * s + (1 - a) * y;
    w = a * w + (1 - a);
    out.emplace_back(x, s / w);
  }
  return out;
}

// A 1-2-2.5-5 x 10^k tick step giving about `n` intervals over [lo, hi].
double nice_step(double lo, double hi, int n) {
  const double raw = (hi - lo) / n;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= raw * (1 - 1e-9)) return m * p;
  return 10 * p;
}

// Enough decimals for a 1-2-2.5-5 x 10^k step: 0.25 -> 2, 0.5 -> 1, 2.5 -> 1, 25 -> 0.
std::string tick_text(double v, double step) {
  if (std::abs(v) < step * 1e-9) v = 0;
  const double e = std::floor(std::log10(step) + 1e-9);
  const bool quarter = std::abs(step / std::pow(10.0, e) - 2.5) < 1e-6;
  const int decimals = std::max(0, static_cast<int>(-e) + (quarter ? 1 : 0));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

struct Axis {
  double lo, hi, step;
};

Axis nice_axis(double lo, double hi, int n) {
  if (!(hi > lo)) {
    const double pad = std::max(std::abs(lo) * 0.05, 0.5);
    lo -= pad;
    hi += pad;
  }
  const double step = nice_step(lo, hi, n);
  return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step, step};
}

std::string polyline(const Points& p, const std::function<double(double)>& px, const std::function<double(double)>& py,
                     const char* colour, double width, const char* dash, double opacity) {
  std::ostringstream os;
  os << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"" << width << "\" stroke-opacity=\""
     << opacity << "\" stroke-linejoin=\"round\"";
  if (dash[0]) os << " stroke-dasharray=\"" << dash << "\"";
  os << " points=\"";
  char buf[64];
  for (auto [x, y] : p) {
    std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(x), py(y));
    os << buf;
  }
  os << "\"/>\n";
  return os.str();
}

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&')
      out += "&amp;";
    else if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

// One panel's curves: per run (dash pattern) the three series (colours); held-out points raw with
// markers, training raw or raw + EMA-smoothed.
template <typename PX, typename PY>
void draw_curves(std::ostringstream& os, const std::vector<RunData>& data, const PlotOptions& opt, bool ev, PX px,
                 PY py) {
  for (size_t r = 0; r < data.size(); ++r) {
    const char* dash = kDashes[r % std::size(kDashes)];
    // The objective first, thin: it never hides a group curve (it equals L_imp when lambda = 1).
    if (!ev && opt.objective && !data[r].objective.empty())
      os << polyline(data[r].objective, px, py, kObjective.colour, 1.0, dash, 0.8);
    for (int s = 0; s < 3; ++s) {
      const Points& p = ev ? data[r].eval[s] : data[r].train[s];
      if (p.empty()) continue;
      if (ev) {  // few points: raw, with markers
        os << polyline(p, px, py, kSeries[s].colour, 1.8, dash, 1.0);
        for (auto [x, y] : p)
          os << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"2.5\" fill=\"" << kSeries[s].colour
             << "\"/>\n";
      } else if (opt.smooth > 0) {
        os << polyline(p, px, py, kSeries[s].colour, 0.8, dash, 0.3)
           << polyline(smoothed(p, opt.smooth), px, py, kSeries[s].colour, 2.0, dash, 1.0);
      } else {
        os << polyline(p, px, py, kSeries[s].colour, 1.8, dash, 1.0);
      }
    }
  }
}

// Legend at (lx, ly): colours = series, dash patterns = runs.
void draw_legend(std::ostringstream& os, const std::vector<RunData>& data, const PlotOptions& opt, double lx,
                 double ly) {
  auto entry = [&](const char* colour, const char* dash, const std::string& text) {
    os << "<line x1=\"" << lx << "\" x2=\"" << lx + 30 << "\" y1=\"" << ly << "\" y2=\"" << ly << "\" stroke=\""
       << colour << "\" stroke-width=\"2\""
       << (dash[0] ? std::string(" stroke-dasharray=\"") + dash + "\"" : std::string()) << "/><text x=\"" << lx + 36
       << "\" y=\"" << ly + 4 << "\">" << escape(text) << "</text>\n";
    ly += 18;
  };
  for (const auto& s : kSeries) entry(s.colour, "", s.label);
  if (opt.objective) entry(kObjective.colour, "", kObjective.label);
  if (opt.smooth > 0) {
    os << "<text x=\"" << lx << "\" y=\"" << ly + 4 << "\" fill=\"#555\">training: light = raw, bold = EMA "
       << opt.smooth << "</text>\n";
    ly += 18;
  }
  ly += 8;
  if (data.size() > 1 || !data[0].label.empty())
    for (size_t r = 0; r < data.size(); ++r) entry("#333", kDashes[r % std::size(kDashes)], data[r].label);
}

}  // namespace

std::string plot_runs_svg(const std::vector<PlotRun>& runs, const PlotOptions& opt) {
  SFTGO_CHECK(!runs.empty(), ErrorKind::kUsage, "plot: no run to draw");
  SFTGO_CHECK(opt.smooth >= 0 && opt.smooth < 1, ErrorKind::kUsage, "plot: smoothing must be in [0, 1), got ",
              opt.smooth);
  std::vector<RunData> data;
  for (const auto& r : runs) data.push_back(read_run(r));

  bool any_eval = false;
  for (const auto& d : data)
    for (const auto& e : d.eval) any_eval |= !e.empty();
  struct Panel {
    const char* title;
    bool eval;
  };
  std::vector<Panel> panels = {{"training (per step)", false}};
  if (any_eval) panels.push_back({"held-out (data.eval_path)", true});

  const double PW = 420, PH = 300, L = 64, T = 56, B = 48, GAP = 56, LEG = 230;
  const double W = L + panels.size() * PW + (panels.size() - 1) * GAP + 24 + LEG, H = T + PH + B;
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
     << "<text x=\"" << L << "\" y=\"22\" font-size=\"15\">" << escape(opt.title) << "</text>\n";

  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const bool ev = panels[pi].eval;
    double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
    auto extend = [&](const Points& p) {
      for (auto [x, y] : p) {
        x0 = std::min(x0, x);
        x1 = std::max(x1, x);
        y0 = std::min(y0, y);
        y1 = std::max(y1, y);
      }
    };
    for (const auto& d : data) {
      for (int s = 0; s < 3; ++s) extend(ev ? d.eval[s] : d.train[s]);
      if (!ev && opt.objective) extend(d.objective);
    }
    SFTGO_CHECK(std::isfinite(x0) || ev, ErrorKind::kData, runs[0].metrics_jsonl,
                runs.size() > 1 ? " (and the other runs)" : "", ": no steps with loss values to plot");
    if (!std::isfinite(x0)) continue;
    const Axis ax = nice_axis(x0, x1, 5), ay = nice_axis(y0, y1, 5);
    const double left = L + pi * (PW + GAP), top = T;
    auto px = [&](double x) { return left + (x - ax.lo) / (ax.hi - ax.lo) * PW; };
    auto py = [&](double y) { return top + PH - (y - ay.lo) / (ay.hi - ay.lo) * PH; };
    os << "<text x=\"" << left << "\" y=\"" << top - 10 << "\" font-size=\"13\" font-weight=\"bold\">"
       << panels[pi].title << "</text>\n";
    for (double y = ay.lo; y <= ay.hi + ay.step * 1e-6; y += ay.step)
      os << "<line x1=\"" << left << "\" x2=\"" << left + PW << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
         << "\" stroke=\"#e5e5e5\"/><text x=\"" << left - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">"
         << tick_text(y, ay.step) << "</text>\n";
    for (double x = ax.lo; x <= ax.hi + ax.step * 1e-6; x += ax.step)
      os << "<line x1=\"" << px(x) << "\" x2=\"" << px(x) << "\" y1=\"" << top + PH << "\" y2=\"" << top + PH + 4
         << "\" stroke=\"#333\"/><text x=\"" << px(x) << "\" y=\"" << top + PH + 18 << "\" text-anchor=\"middle\">"
         << tick_text(x, ax.step) << "</text>\n";
    os << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << PW << "\" height=\"" << PH
       << "\" fill=\"none\" stroke=\"#333\"/>\n"
       << "<text x=\"" << left + PW / 2 << "\" y=\"" << H - 10 << "\" text-anchor=\"middle\">optimizer step</text>\n";
    if (pi == 0)
      os << "<text x=\"16\" y=\"" << top + PH / 2 << "\" transform=\"rotate(-90 16 " << top + PH / 2
         << ")\" text-anchor=\"middle\">mean cross-entropy (nats/token)</text>\n";
    draw_curves(os, data, opt, ev, px, py);
  }
  draw_legend(os, data, opt, L + panels.size() * PW + (panels.size() - 1) * GAP + 24, T + 6);
  os << "</svg>\n";
  return os.str();
}

std::string plot_metrics_svg(const std::string& path, const std::string& title) {
  PlotOptions o;
  o.title = title;
  return plot_runs_svg({PlotRun{"", path}}, o);
}

}  // namespace sftgo::train
