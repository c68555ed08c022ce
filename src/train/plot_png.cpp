// The plot's figure as a PNG, drawn with cairo (Debian libcairo2-dev), so that a report gets a
// raster image of exactly the shapes the SVG holds.
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "plot_figure.h"
#include "sftgo/core/error.h"

#ifdef SFTGO_HAVE_CAIRO
#include <cairo.h>
#endif

namespace sftgo::train::detail {

#ifdef SFTGO_HAVE_CAIRO
namespace {

void set_colour(cairo_t* cr, const std::string& hex, double alpha) {
  const unsigned long v = std::strtoul(hex.c_str() + (hex.empty() ? 0 : 1), nullptr, 16);
  cairo_set_source_rgba(cr, ((v >> 16) & 255) / 255.0, ((v >> 8) & 255) / 255.0, (v & 255) / 255.0, alpha);
}

void set_dash(cairo_t* cr, const std::string& dash) {
  std::vector<double> d;
  const char* p = dash.c_str();
  while (*p) {
    char* end = nullptr;
    const double v = std::strtod(p, &end);
    if (end == p) break;
    d.push_back(v);
    p = *end == ',' ? end + 1 : end;
  }
  cairo_set_dash(cr, d.data(), static_cast<int>(d.size()), 0);
}

void stroke_path(cairo_t* cr, const Shape& s, double alpha) {
  set_colour(cr, s.stroke, alpha);
  cairo_set_line_width(cr, s.width);
  set_dash(cr, s.dash);
  cairo_stroke(cr);
}

void draw_text(cairo_t* cr, const Shape& s) {
  cairo_select_font_face(cr, "DejaVu Sans", CAIRO_FONT_SLANT_NORMAL,
                         s.bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, s.font_size);
  cairo_text_extents_t ext;
  cairo_text_extents(cr, s.text.c_str(), &ext);
  const double shift = s.anchor == Shape::Anchor::kMiddle ? ext.x_advance / 2
                       : s.anchor == Shape::Anchor::kEnd  ? ext.x_advance
                                                          : 0.0;
  cairo_save(cr);
  cairo_translate(cr, s.points.at(0).first, s.points.at(0).second);
  if (s.vertical) cairo_rotate(cr, -M_PI / 2);  // as SVG's rotate(-90): reads bottom to top
  cairo_move_to(cr, -shift, 0);
  set_colour(cr, s.fill.empty() ? "#000000" : s.fill, 1.0);
  cairo_show_text(cr, s.text.c_str());
  cairo_restore(cr);
}

void draw_shape(cairo_t* cr, const Shape& s) {
  switch (s.kind) {
    case Shape::Kind::kPolyline:
    case Shape::Kind::kLine:
      if (s.points.empty()) return;
      cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
      cairo_move_to(cr, s.points[0].first, s.points[0].second);
      for (size_t i = 1; i < s.points.size(); ++i) cairo_line_to(cr, s.points[i].first, s.points[i].second);
      stroke_path(cr, s, s.opacity);
      return;
    case Shape::Kind::kRect:
      cairo_rectangle(cr, s.points[0].first, s.points[0].second, s.points[1].first, s.points[1].second);
      if (!s.fill.empty()) {
        set_colour(cr, s.fill, 1.0);
        s.stroke.empty() ? cairo_fill(cr) : cairo_fill_preserve(cr);
      }
      if (!s.stroke.empty()) stroke_path(cr, s, 1.0);
      return;
    case Shape::Kind::kCircle:
      cairo_new_sub_path(cr);
      cairo_arc(cr, s.points[0].first, s.points[0].second, s.radius, 0, 2 * M_PI);
      set_colour(cr, s.fill, 1.0);
      cairo_fill(cr);
      return;
    case Shape::Kind::kText:
      draw_text(cr, s);
      return;
  }
}

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

}  // namespace

bool png_supported() { return true; }

std::string render_png(const Figure& f, double scale) {
  const int w = static_cast<int>(std::ceil(f.width * scale)), h = static_cast<int>(std::ceil(f.height * scale));
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, w, h);
  cairo_t* cr = cairo_create(surface);
  cairo_scale(cr, scale, scale);
  for (const Shape& s : f.shapes) draw_shape(cr, s);
  cairo_status_t status = cairo_status(cr);
  std::string png;
  if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_write_to_png_stream(surface, append_bytes, &png);
  cairo_destroy(cr);
  cairo_surface_destroy(surface);
  SFTGO_CHECK(status == CAIRO_STATUS_SUCCESS, ErrorKind::kInternal, "plot: cairo could not draw the ", w, "x", h,
              " PNG: ", cairo_status_to_string(status));
  return png;
}

#else

bool png_supported() { return false; }

std::string render_png(const Figure&, double) {
  SFTGO_FAIL_HINT(ErrorKind::kUsage,
                  "install libcairo2-dev (scripts/setup.sh does) and re-run cmake, or write an .svg",
                  "plot: this sftgo-train was built without cairo, so it cannot write PNG");
}

#endif

}  // namespace sftgo::train::detail
