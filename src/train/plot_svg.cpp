// The plot's figure as SVG text: the shapes plot.cpp lays out, written as SVG elements.
#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>

#include "plot_figure.h"

namespace sftgo::train {

namespace detail {
namespace {

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

std::string num(double v) {  // 0.1 px is below what any viewer shows
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", std::abs(v) < 0.05 ? 0.0 : v);
  return buf;
}

std::string gnum(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void svg_text(std::ostringstream& os, const Shape& s) {
  const auto [x, y] = s.points.at(0);
  os << "<text x=\"" << num(x) << "\" y=\"" << num(y) << "\"";
  if (s.font_size != 12) os << " font-size=\"" << gnum(s.font_size) << "\"";
  if (s.bold) os << " font-weight=\"bold\"";
  if (!s.fill.empty()) os << " fill=\"" << s.fill << "\"";
  if (s.vertical) os << " transform=\"rotate(-90 " << num(x) << " " << num(y) << ")\"";
  if (s.anchor != Shape::Anchor::kStart)
    os << " text-anchor=\"" << (s.anchor == Shape::Anchor::kMiddle ? "middle" : "end") << "\"";
  os << ">" << escape(s.text) << "</text>\n";
}

}  // namespace

std::string render_svg(const Figure& f) {
  std::ostringstream os;
  os << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << gnum(f.width) << "\" height=\"" << gnum(f.height)
     << "\" viewBox=\"0 0 " << gnum(f.width) << " " << gnum(f.height)
     << "\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"12\">\n";
  for (const Shape& s : f.shapes) {
    const std::string dash = s.dash.empty() ? "" : " stroke-dasharray=\"" + s.dash + "\"";
    switch (s.kind) {
      case Shape::Kind::kPolyline:
        os << "<polyline fill=\"none\" stroke=\"" << s.stroke << "\" stroke-width=\"" << gnum(s.width)
           << "\" stroke-opacity=\"" << gnum(s.opacity) << "\" stroke-linejoin=\"round\"" << dash << " points=\"";
        for (auto [x, y] : s.points) os << num(x) << "," << num(y) << " ";
        os << "\"/>\n";
        break;
      case Shape::Kind::kLine:
        os << "<line x1=\"" << num(s.points[0].first) << "\" y1=\"" << num(s.points[0].second) << "\" x2=\""
           << num(s.points[1].first) << "\" y2=\"" << num(s.points[1].second) << "\" stroke=\"" << s.stroke
           << "\" stroke-width=\"" << gnum(s.width) << "\"" << dash << "/>\n";
        break;
      case Shape::Kind::kRect:
        os << "<rect x=\"" << num(s.points[0].first) << "\" y=\"" << num(s.points[0].second) << "\" width=\""
           << num(s.points[1].first) << "\" height=\"" << num(s.points[1].second) << "\" fill=\""
           << (s.fill.empty() ? "none" : s.fill) << "\"";
        if (!s.stroke.empty()) os << " stroke=\"" << s.stroke << "\"";
        os << "/>\n";
        break;
      case Shape::Kind::kCircle:
        os << "<circle cx=\"" << num(s.points[0].first) << "\" cy=\"" << num(s.points[0].second) << "\" r=\""
           << gnum(s.radius) << "\" fill=\"" << s.fill << "\"/>\n";
        break;
      case Shape::Kind::kText:
        svg_text(os, s);
        break;
    }
  }
  os << "</svg>\n";
  return os.str();
}

}  // namespace detail
}  // namespace sftgo::train
