// The plot's drawing, made once and rendered twice: as SVG text (plot.cpp) and as a PNG with cairo
// (plot_png.cpp), so both files show the same figure. Private to src/train.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sftgo::train::detail {

// One drawing primitive in figure units (1 unit = 1 SVG px). Colours are "#rrggbb"; "" = none.
struct Shape {
  enum class Kind { kPolyline, kLine, kRect, kCircle, kText };
  enum class Anchor { kStart, kMiddle, kEnd };
  Kind kind = Kind::kPolyline;
  std::vector<std::pair<double, double>> points;  // polyline/line vertices; rect: corner, size; circle/text: position
  std::string stroke, fill;
  double width = 1.0;    // stroke width
  double opacity = 1.0;  // stroke opacity (polylines)
  std::string dash;      // SVG dash array, e.g. "7,4"; "" = solid
  double radius = 0.0;   // circle
  std::string text;      // kText: UTF-8
  Anchor anchor = Anchor::kStart;
  double font_size = 12.0;
  bool bold = false;
  bool vertical = false;  // text rotated 90 degrees anticlockwise about its position
};

struct Figure {
  double width = 0, height = 0;
  std::vector<Shape> shapes;  // painted in order
};

std::string render_svg(const Figure& figure);
// PNG bytes at `scale` pixels per figure unit; sftgo::Error(kUsage) in a build without cairo.
std::string render_png(const Figure& figure, double scale);
bool png_supported();

}  // namespace sftgo::train::detail
