#include "sftgo/train/plot.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iterator>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include "plot_figure.h"
#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/strings.h"

namespace sftgo::train {
namespace {

using detail::Figure;
using detail::Shape;

struct SeriesDef {
  const char* key;    // metrics.jsonl field of a training line; "eval_" + key on eval lines
  const char* count;  // the training line's token count of the group ("" = always drawn)
  const char* label;
  const char* colour;
};
// The paper's Figure 2 colours: all tokens blue, important orange, unimportant green.
constexpr SeriesDef kSeries[] = {{"loss_ce", "", "L_CE (all tokens)", "#1f77b4"},
                                 {"loss_imp", "count_imp", "L_imp (important)", "#ff7f0e"},
                                 {"loss_unimp", "count_unimp", "L_unimp (rest)", "#2ca02c"}};
constexpr const char* kObjectiveColour = "#7f7f7f";
constexpr const char* kDashes[] = {"", "7,4", "2,3", "9,3,2,3", "4,2,1,2,1,2"};

using Points = std::vector<std::pair<double, double>>;

// What the objective curve of a run is: its own line (sftgo), or one of the group curves.
enum class ObjectiveIs { kNone, kOwn, kCe, kImp };

struct RunData {
  std::string label;
  Points train[3], eval[3], objective;
  ObjectiveIs objective_is = ObjectiveIs::kNone;
};

bool same_curve(const Points& a, const Points& b) {
  if (a.size() != b.size() || a.empty()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || std::abs(a[i].second - b[i].second) > 1e-9 * std::max(1.0, std::abs(b[i].second)))
      return false;
  return true;
}

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
    for (const auto& s : kSeries) {
      const size_t k = static_cast<size_t>(&s - kSeries);
      // A group with no token in this step has no mean (the trainer writes 0): no point.
      const bool empty_group = s.count[0] && j.contains(s.count) && j[s.count].is_number() && j[s.count] == 0;
      if (!empty_group) take(s.key, d.train[k]);
      take(std::string("eval_") + s.key, d.eval[k]);
    }
    take("loss", d.objective);
  }
  auto by_step = [](const auto& a, const auto& b) { return a.first < b.first; };
  for (int s = 0; s < 3; ++s) {
    std::stable_sort(d.train[s].begin(), d.train[s].end(), by_step);
    std::stable_sort(d.eval[s].begin(), d.eval[s].end(), by_step);
  }
  std::stable_sort(d.objective.begin(), d.objective.end(), by_step);
  if (d.objective.empty())
    d.objective_is = ObjectiveIs::kNone;
  else if (run.objective == "ce" || (run.objective.empty() && same_curve(d.objective, d.train[0])))
    d.objective_is = ObjectiveIs::kCe;
  else if (run.objective == "rho1")
    d.objective_is = ObjectiveIs::kImp;
  else
    d.objective_is = ObjectiveIs::kOwn;
  return d;
}

// Moments about x_i of the points on one side of i (i included), weights a^|x_j - x_i|:
// s_k = sum w (x_j - x_i)^k, t_k = sum w (x_j - x_i)^k y_j.
struct Moments {
  double s0, s1, s2, t0, t1;
};

// Moments at a point `d` further along (d = x_new - x_old, signed), plus the point itself.
Moments shift(const Moments& m, double d, double a, double y) {
  const double w = std::pow(a, std::abs(d));
  return {1 + w * m.s0, w * (m.s1 - d * m.s0), w * (m.s2 - 2 * d * m.s1 + d * d * m.s0), y + w * m.t0,
          w * (m.t1 - d * m.t0)};
}

// A local linear fit at every point with weights a^|x_j - x_i| on both sides (centred: no lag, and
// exact on straight lines up to the ends), in O(n) from one forward and one backward pass.
Points smoothed(const Points& p, double a) {
  const size_t n = p.size();
  if (a <= 0 || n < 3) return p;
  std::vector<Moments> fwd(n), bwd(n);
  fwd[0] = {1, 0, 0, p[0].second, 0};
  for (size_t i = 1; i < n; ++i) fwd[i] = shift(fwd[i - 1], p[i].first - p[i - 1].first, a, p[i].second);
  bwd[n - 1] = {1, 0, 0, p[n - 1].second, 0};
  for (size_t i = n - 1; i-- > 0;) bwd[i] = shift(bwd[i + 1], p[i].first - p[i + 1].first, a, p[i].second);
  Points out;
  for (size_t i = 0; i < n; ++i) {
    const Moments& f = fwd[i];
    const Moments& b = bwd[i];
    // Both sides count the point itself once.
    const double s0 = f.s0 + b.s0 - 1, s1 = f.s1 + b.s1, s2 = f.s2 + b.s2;
    const double t0 = f.t0 + b.t0 - p[i].second, t1 = f.t1 + b.t1;
    const double det = s0 * s2 - s1 * s1;
    out.emplace_back(p[i].first, det > 1e-12 * s0 * s2 ? (s2 * t0 - s1 * t1) / det : t0 / s0);
  }
  return out;
}

struct Axis {
  double lo, hi, step;
  int intervals() const { return static_cast<int>(std::lround((hi - lo) / step)); }
};

// Limits on multiples of a 1-2-2.5-5 x 10^k step around [lo, hi], 3 to 8 intervals, with the least
// room beyond the data (ties: the wider step; 2.5 only when nothing else fits as well). `integer`
// axes (steps) only take integer tick steps.
Axis nice_axis(double lo, double hi, bool integer) {
  if (!(hi > lo)) {
    const double pad = integer ? 1.0 : std::max(std::abs(lo) * 0.05, 0.5);
    hi = lo + pad;
    if (!integer) lo -= pad;
  }
  const double span = hi - lo;
  const double p0 = std::pow(10.0, std::floor(std::log10(span / 8)) - 1);
  auto fit = [&](double s) { return Axis{std::floor(lo / s + 1e-9) * s, std::ceil(hi / s - 1e-9) * s, s}; };
  std::optional<Axis> best, fallback;
  double best_score = std::numeric_limits<double>::infinity();
  for (double p = p0; p <= p0 * 1000; p *= 10)
    for (double m : {1.0, 2.0, 2.5, 5.0}) {
      const double s = m * p;
      if (integer && (s < 1 - 1e-9 || std::abs(s - std::round(s)) > 1e-9)) continue;
      const Axis ax = fit(s);
      if (!fallback && ax.intervals() <= 8) fallback = ax;  // the finest step with few enough ticks
      if (ax.intervals() < 3 || ax.intervals() > 8) continue;
      const double score = (ax.hi - ax.lo - span) / span + (m == 2.5 ? 1e-6 : 0.0);
      if (score < best_score - 1e-12 || (score <= best_score + 1e-12 && s > best->step)) {
        best = ax;
        best_score = score;
      }
    }
  return best ? *best : fallback ? *fallback : fit(span);
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

// ---- Drawing ----------------------------------------------------------------------------------

Shape line_shape(double x1, double y1, double x2, double y2, const std::string& colour, double width,
                 const std::string& dash = "") {
  Shape s;
  s.kind = Shape::Kind::kLine;
  s.points = {{x1, y1}, {x2, y2}};
  s.stroke = colour;
  s.width = width;
  s.dash = dash;
  return s;
}

Shape text_shape(double x, double y, const std::string& text, Shape::Anchor anchor = Shape::Anchor::kStart,
                 double size = 12, bool bold = false, const std::string& colour = "") {
  Shape s;
  s.kind = Shape::Kind::kText;
  s.points = {{x, y}};
  s.text = text;
  s.anchor = anchor;
  s.font_size = size;
  s.bold = bold;
  s.fill = colour;
  return s;
}

struct Frame {  // a panel's pixel box and axes
  double left, top, width, height;
  Axis x, y;
  double px(double v) const { return left + (v - x.lo) / (x.hi - x.lo) * width; }
  double py(double v) const { return top + height - (v - y.lo) / (y.hi - y.lo) * height; }
};

void add_polyline(Figure& f, const Frame& fr, const Points& p, const char* colour, double width, const char* dash,
                  double opacity) {
  Shape s;
  s.kind = Shape::Kind::kPolyline;
  for (auto [x, y] : p) s.points.emplace_back(fr.px(x), fr.py(y));
  s.stroke = colour;
  s.width = width;
  s.dash = dash;
  s.opacity = opacity;
  f.shapes.push_back(std::move(s));
}

// One panel's curves: per run (dash pattern) the three series (colours); held-out points raw with
// markers, training raw or raw + smoothed.
void draw_curves(Figure& f, const Frame& fr, const std::vector<RunData>& data, const PlotOptions& opt, bool ev) {
  for (size_t r = 0; r < data.size(); ++r) {
    const char* dash = kDashes[r % std::size(kDashes)];
    // The objective first, thin: it never hides a group curve. When it is a group curve itself (ce:
    // L_CE, rho1: L_imp) it is not drawn again over it; the legend says so.
    if (!ev && opt.objective && data[r].objective_is == ObjectiveIs::kOwn)
      add_polyline(f, fr, data[r].objective, kObjectiveColour, 1.0, dash, 0.8);
    for (int s = 0; s < 3; ++s) {
      const Points& p = ev ? data[r].eval[s] : data[r].train[s];
      if (p.empty()) continue;
      if (ev) {  // few points: raw, with markers
        add_polyline(f, fr, p, kSeries[s].colour, 1.8, dash, 1.0);
        for (auto [x, y] : p) {
          Shape c;
          c.kind = Shape::Kind::kCircle;
          c.points = {{fr.px(x), fr.py(y)}};
          c.radius = 2.5;
          c.fill = kSeries[s].colour;
          f.shapes.push_back(c);
        }
      } else if (opt.smooth > 0) {
        add_polyline(f, fr, p, kSeries[s].colour, 0.8, dash, 0.3);
        add_polyline(f, fr, smoothed(p, opt.smooth), kSeries[s].colour, 2.0, dash, 1.0);
      } else {
        add_polyline(f, fr, p, kSeries[s].colour, 1.8, dash, 1.0);
      }
    }
  }
}

// A slightly generous width of `text` at 12 px in DejaVu Sans (~6.1 px per character of legend text; UTF-8
// continuation bytes take no room).
double text_width(const std::string& text) {
  double chars = 0;
  for (unsigned char c : text) chars += (c & 0xC0) != 0x80;
  return 6.6 * chars;
}

// Legend at (lx, ly): colours = series, dash patterns = runs. Returns its right edge.
double draw_legend(Figure& f, const std::vector<RunData>& data, const PlotOptions& opt, double lx, double ly) {
  double right = lx;
  auto entry = [&](const char* colour, const char* dash, const std::string& text) {
    f.shapes.push_back(line_shape(lx, ly, lx + 30, ly, colour, 2, dash));
    f.shapes.push_back(text_shape(lx + 36, ly + 4, text));
    right = std::max(right, lx + 36 + text_width(text));
    ly += 18;
  };
  auto note = [&](const std::string& text) {
    f.shapes.push_back(text_shape(lx, ly + 4, text, Shape::Anchor::kStart, 12, false, "#555555"));
    right = std::max(right, lx + text_width(text));
    ly += 18;
  };
  for (const auto& s : kSeries) entry(s.colour, "", s.label);
  if (opt.objective) {
    bool own = false, ce = false, imp = false;
    for (const auto& d : data) {
      own |= d.objective_is == ObjectiveIs::kOwn;
      ce |= d.objective_is == ObjectiveIs::kCe;
      imp |= d.objective_is == ObjectiveIs::kImp;
    }
    if (own) entry(kObjectiveColour, "", "objective");
    if (ce) note(data.size() > 1 ? "SFT runs: objective = L_CE" : "objective = L_CE (SFT)");
    if (imp) note(data.size() > 1 ? "Rho-1 runs: objective = L_imp" : "objective = L_imp (Rho-1)");
  }
  if (opt.smooth > 0) {
    char buf[80];
    std::snprintf(buf, sizeof buf, "training: light = raw, bold = smoothed %g", opt.smooth);
    note(buf);
  }
  ly += 8;
  if (data.size() > 1 || !data[0].label.empty())
    for (size_t r = 0; r < data.size(); ++r) entry("#333333", kDashes[r % std::size(kDashes)], data[r].label);
  return right;
}

// Ticks, grid, frame and labels of one panel.
void draw_axes(Figure& f, const Frame& fr, const char* title, bool y_label) {
  f.shapes.push_back(text_shape(fr.left, fr.top - 10, title, Shape::Anchor::kStart, 13, true));
  for (int k = 0; k <= fr.y.intervals(); ++k) {
    const double v = fr.y.lo + k * fr.y.step;
    f.shapes.push_back(line_shape(fr.left, fr.py(v), fr.left + fr.width, fr.py(v), "#e5e5e5", 1));
    f.shapes.push_back(text_shape(fr.left - 6, fr.py(v) + 4, tick_text(v, fr.y.step), Shape::Anchor::kEnd));
  }
  for (int k = 0; k <= fr.x.intervals(); ++k) {
    const double v = fr.x.lo + k * fr.x.step;
    const double b = fr.top + fr.height;
    f.shapes.push_back(line_shape(fr.px(v), b, fr.px(v), b + 4, "#333333", 1));
    f.shapes.push_back(text_shape(fr.px(v), b + 18, tick_text(v, fr.x.step), Shape::Anchor::kMiddle));
  }
  Shape box;
  box.kind = Shape::Kind::kRect;
  box.points = {{fr.left, fr.top}, {fr.width, fr.height}};
  box.stroke = "#333333";
  f.shapes.push_back(box);
  f.shapes.push_back(text_shape(fr.left + fr.width / 2, fr.top + fr.height + 38, "optimizer step", Shape::Anchor::kMiddle));
  if (y_label) {
    Shape t = text_shape(16, fr.top + fr.height / 2, "mean cross-entropy (nats/token)", Shape::Anchor::kMiddle);
    t.vertical = true;
    f.shapes.push_back(t);
  }
}

// Bounds of a set of curves; x starts at 0 (the step before training).
void extend(const Points& p, double& x1, double& y0, double& y1) {
  for (auto [x, y] : p) {
    x1 = std::max(x1, x);
    y0 = std::min(y0, y);
    y1 = std::max(y1, y);
  }
}

Figure make_figure(const std::vector<PlotRun>& runs, const PlotOptions& opt) {
  SFTGO_CHECK(!runs.empty(), ErrorKind::kUsage, "plot: no run to draw");
  SFTGO_CHECK(opt.smooth >= 0 && opt.smooth < 1, ErrorKind::kUsage, "plot: smoothing must be in [0, 1), got ",
              opt.smooth);
  std::vector<RunData> data;
  for (const auto& r : runs) data.push_back(read_run(r));

  // Both panels share the step axis: from 0 to the last step any run logged (training or held-out).
  const double inf = std::numeric_limits<double>::infinity();
  double x_first = inf, x_last = -inf, ty0 = inf, ty1 = -inf, ey0 = inf, ey1 = -inf;
  for (const auto& d : data) {
    for (int s = 0; s < 3; ++s) {
      extend(d.train[s], x_last, ty0, ty1);
      extend(d.eval[s], x_last, ey0, ey1);
      for (const auto* p : {&d.train[s], &d.eval[s]})
        if (!p->empty()) x_first = std::min(x_first, p->front().first);
    }
    if (opt.objective && d.objective_is == ObjectiveIs::kOwn) extend(d.objective, x_last, ty0, ty1);
  }
  SFTGO_CHECK(std::isfinite(ty0), ErrorKind::kData, runs[0].metrics_jsonl,
              runs.size() > 1 ? " (and the other runs)" : "", ": no steps with loss values to plot");
  const Axis ax = nice_axis(std::min(0.0, x_first), x_last, true);
  const bool any_eval = std::isfinite(ey0);

  const double PW = 420, PH = 300, L = 64, T = 56, B = 48, GAP = 56;
  const int panels = any_eval ? 2 : 1;
  Figure f;
  f.height = T + PH + B;
  Shape bg;
  bg.kind = Shape::Kind::kRect;
  bg.fill = "#ffffff";
  f.shapes.push_back(bg);  // sized below, when the legend's width is known
  const std::string title = opt.title.empty() ? default_plot_title(runs) : opt.title;
  f.shapes.push_back(text_shape(L, 22, title, Shape::Anchor::kStart, 15));
  for (int pi = 0; pi < panels; ++pi) {
    const bool ev = pi == 1;
    const Frame fr{L + pi * (PW + GAP), T, PW, PH, ax, ev ? nice_axis(ey0, ey1, false) : nice_axis(ty0, ty1, false)};
    draw_axes(f, fr, ev ? "held-out (data.eval_path)" : "training (per step)", pi == 0);
    draw_curves(f, fr, data, opt, ev);
  }
  const double right = draw_legend(f, data, opt, L + panels * PW + (panels - 1) * GAP + 24, T + 6);
  f.width = std::ceil(std::max(right, L + 1.25 * text_width(title)) + 16);  // the title is 15 px
  f.shapes[0].points = {{0, 0}, {f.width, f.height}};
  return f;
}

const char* method_name(const std::string& objective) {
  if (objective == "sftgo") return "SFT-GO";
  if (objective == "ce") return "SFT";
  if (objective == "rho1") return "Rho-1";
  return nullptr;
}

}  // namespace

std::string default_plot_title(const std::vector<PlotRun>& runs) {
  std::vector<std::string> methods;  // in order of first appearance
  bool unknown = false;
  for (const auto& r : runs) {
    const char* m = method_name(r.objective);
    if (!m)
      unknown = true;
    else if (std::find(methods.begin(), methods.end(), m) == methods.end())
      methods.push_back(m);
  }
  const std::string what = runs.size() == 1 ? runs[0].label : std::to_string(runs.size()) + " runs";
  if (unknown || methods.empty()) return "Losses by token group: " + what;
  if (methods.size() == 1) return methods[0] + " losses by token group: " + what;
  std::string vs;
  for (const auto& m : methods) vs += (vs.empty() ? "" : " vs ") + m;
  return vs + ": losses by token group";
}

PlotRun plot_run_from_dir(const std::string& run_dir, const std::string& label) {
  namespace fs = std::filesystem;
  PlotRun run;
  run.metrics_jsonl = (fs::path(run_dir) / "metrics.jsonl").string();
  run.label = label;
  if (run.label.empty()) {
    const fs::path norm = fs::path(run_dir).lexically_normal();
    run.label = norm.filename().string();
    if (run.label.empty()) run.label = norm.parent_path().filename().string();
    if (run.label.empty() || run.label == ".") run.label = fs::absolute(norm).parent_path().filename().string();
  }
  const std::string cfg = (fs::path(run_dir) / "resolved_config.yaml").string();
  std::error_code ec;
  if (!fs::exists(cfg, ec)) return run;  // metrics from elsewhere: the method stays unnamed
  try {
    const YAML::Node loss = YAML::LoadFile(cfg)["loss"];
    if (loss && loss["objective"]) run.objective = loss["objective"].as<std::string>();
  } catch (const std::exception& e) {
    log_warn("{}: cannot read loss.objective ({}); the plot's title names no method", cfg, e.what());
  }
  if (!run.objective.empty() && !method_name(run.objective)) {
    log_warn("{}: unknown loss.objective '{}'; the plot's title names no method", cfg, run.objective);
    run.objective.clear();
  }
  return run;
}

std::string plot_runs_svg(const std::vector<PlotRun>& runs, const PlotOptions& opt) {
  return detail::render_svg(make_figure(runs, opt));
}

std::string plot_runs_png(const std::vector<PlotRun>& runs, const PlotOptions& opt, double scale) {
  SFTGO_CHECK(scale > 0 && scale <= 8, ErrorKind::kUsage, "plot: PNG scale must be in (0, 8], got ", scale);
  return detail::render_png(make_figure(runs, opt), scale);
}

bool plot_png_supported() { return detail::png_supported(); }

std::string plot_metrics_svg(const std::string& path, const std::string& title) {
  PlotOptions o;
  o.title = title;
  return plot_runs_svg({PlotRun{"", path, ""}}, o);
}

}  // namespace sftgo::train
