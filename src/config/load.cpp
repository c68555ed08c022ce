// YAML -> Config: the file, then the --set overrides, field by field with file:line errors.
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "schema.h"
#include "sftgo/config/config.h"
#include "sftgo/core/error.h"
#include "sftgo/core/strings.h"

namespace sftgo {

using config_detail::Field;
using config_detail::fields_of;

namespace {

// Records where each YAML document starts (no node is built).
struct DocumentStarts : YAML::EventHandler {
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// "where" prefix for messages: "file.yaml:12" or "--set".
std::string location(const std::string& source, const YAML::Node& node) {
  if (source == "--set") return "--set";
  const auto mark = node.Mark();
  if (mark.line < 0) return source;
  return source + ":" + std::to_string(mark.line + 1);
}

bool is_section(const std::vector<Field>& fields, const std::string& prefix) {
  for (const auto& f : fields)
    if (starts_with(f.key, prefix + ".")) return true;
  return false;
}

[[noreturn]] void unknown_key(const std::string& where, const std::string& key, const std::vector<Field>& fields) {
  const std::string suggestion = config_detail::suggest_key(key, config_detail::keys_of(fields));
  SFTGO_FAIL_HINT(ErrorKind::kConfig, suggestion.empty() ? "see docs/config.md for the valid keys" : suggestion,
                  where, ": unknown config key '", key, "'");
}

// A list field's YAML sequence of plain names as the comma-separated text the field holds.
std::string joined_names(const YAML::Node& node, const std::string& key, const std::string& where) {
  std::string text;
  for (const auto& item : node) {
    SFTGO_CHECK(item.IsScalar(), ErrorKind::kConfig, where, ": ", key, ": expected a list of names, got a nested ",
                item.IsMap() ? "mapping" : "list");
    text += (text.empty() ? "" : ",") + item.Scalar();
  }
  return text;
}

// Sets one field from a YAML scalar (or a list field's sequence), checking type, range and allowed values.
void assign(const Field& f, const YAML::Node& node, const std::string& where) {
  SFTGO_CHECK(node.IsScalar() || node.IsNull() || (f.list && node.IsSequence()), ErrorKind::kConfig, where, ": ",
              f.key, ": expected a ", config_detail::type_name(f), " value, got a ", node.IsMap() ? "mapping" : "list");
  const std::string text = node.IsSequence() ? joined_names(node, f.key, where) : node.IsNull() ? "" : node.Scalar();
  struct Setter {
    const Field& f;
    const std::string& text;
    const std::string& where;
    bool is_null;
    void operator()(bool* p) const {
      if (text == "true" || text == "True" || text == "yes" || text == "on")
        *p = true;
      else if (text == "false" || text == "False" || text == "no" || text == "off")
        *p = false;
      else
        SFTGO_FAIL(ErrorKind::kConfig, where, ": ", f.key, ": expected true or false, got '", excerpt(text), "'");
    }
    void operator()(int64_t* p) const {
      errno = 0;
      char* end = nullptr;
      long long v = std::strtoll(text.c_str(), &end, 10);
      if (is_null || text.empty() || *end != '\0' || errno == ERANGE) {
        // Accept integral floats such as 1e3, which YAML users write for step counts.
        double d = std::strtod(text.c_str(), &end);
        SFTGO_CHECK(!text.empty() && *end == '\0' && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18,
                    ErrorKind::kConfig, where, ": ", f.key, ": expected an integer, got '", excerpt(text), "'");
        v = static_cast<long long>(d);
      }
      config_detail::check_range(f, static_cast<double>(v), where, text);
      *p = v;
    }
    void operator()(double* p) const {
      char* end = nullptr;
      double v = std::strtod(text.c_str(), &end);
      SFTGO_CHECK(!is_null && !text.empty() && *end == '\0' && std::isfinite(v), ErrorKind::kConfig, where, ": ", f.key,
                  ": expected a number, got '", excerpt(text), "'");
      config_detail::check_range(f, v, where, text);
      *p = v;
    }
    void operator()(std::string* p) const {
      config_detail::check_choice(f, text, where);
      *p = text;
    }
  };
  std::visit(Setter{f, text, where, node.IsNull()}, f.ptr);
}

Field* find_field(std::vector<Field>& fields, const std::string& key) {
  for (auto& f : fields)
    if (f.key == key) return &f;
  return nullptr;
}

void apply_map(const YAML::Node& map, const std::string& prefix, const std::string& source, std::vector<Field>& fields,
               std::map<std::string, ValueOrigin>& origins) {
  // yaml-cpp keeps every entry of a mapping, repeated keys included, and a lookup would see only
  // one: a repeated key (`lr: 3e-3` ... `lr: 1.0`) or section would silently take one value.
  std::map<std::string, std::string> seen;  // key -> where it was first given
  for (const auto& kv : map) {
    SFTGO_CHECK(kv.first.IsScalar(), ErrorKind::kConfig, location(source, kv.first), ": keys must be plain names");
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    const std::string where = location(source, kv.first);
    const auto [first, fresh] = seen.emplace(key, where);
    SFTGO_CHECK_HINT(fresh, ErrorKind::kConfig, "give each key (and each section) once", where, ": '", key,
                     "' is given twice (first at ", first->second, ")");
    if (Field* f = find_field(fields, key)) {
      assign(*f, kv.second, location(source, kv.second));
      origins[key].source = where;
    } else if (is_section(fields, key)) {
      SFTGO_CHECK(kv.second.IsMap() || kv.second.IsNull(), ErrorKind::kConfig, where, ": '", key,
                  "' is a section and needs a mapping of keys under it");
      if (kv.second.IsMap()) apply_map(kv.second, key, source, fields, origins);
    } else {
      unknown_key(where, key, fields);
    }
  }
}

void apply_override(const std::string& spec, std::vector<Field>& fields, std::map<std::string, ValueOrigin>& origins) {
  const auto eq = spec.find('=');
  SFTGO_CHECK_HINT(eq != std::string::npos && eq > 0, ErrorKind::kConfig, "write it as --set section.key=value",
                   "--set '", spec, "': expected key=value");
  const std::string key = trim(spec.substr(0, eq));
  const std::string value = spec.substr(eq + 1);
  Field* f = find_field(fields, key);
  if (f == nullptr) unknown_key("--set", key, fields);
  YAML::Node node;
  try {
    node = YAML::Load(value);
  } catch (const YAML::Exception&) {
    node = YAML::Node(value);  // not YAML: take the text as it is
  }
  if (!node.IsScalar() && !node.IsNull() && !(f->list && node.IsSequence())) node = YAML::Node(value);
  assign(*f, node, "--set " + key);
  origins[key].source = "--set";
}

// grouping.eta_percentile (the paper's η) and grouping.top_k_percent state the same thing two ways:
// η = 90 means the top 10% are important. Setting both is an error unless they agree, which is how
// resolved_config.yaml writes them (so it loads back).
void resolve_eta(LoadedConfig& out) {
  auto& g = out.config.grouping;
  if (g.eta_percentile == -1.0) return;
  SFTGO_CHECK(g.eta_percentile > 0 && g.eta_percentile < 100, ErrorKind::kConfig,
              out.origins["grouping.eta_percentile"].source, ": grouping.eta_percentile = ", g.eta_percentile,
              " is out of range (expected a percentile in (0, 100), or -1 for unset)");
  const double share = 100.0 - g.eta_percentile;
  const auto& k_origin = out.origins["grouping.top_k_percent"].source;
  SFTGO_CHECK_HINT(k_origin == "default" || std::abs(g.top_k_percent - share) < 1e-9, ErrorKind::kConfig,
                   "set one of them (eta_percentile 90 = top_k_percent 10)", "grouping.eta_percentile (",
                   out.origins["grouping.eta_percentile"].source, ": ", g.eta_percentile,
                   ") and grouping.top_k_percent (", k_origin, ": ", g.top_k_percent, ") are both set and disagree");
  g.top_k_percent = share;
}

LoadedConfig load_from_node(const YAML::Node& root, const std::string& source,
                            const std::vector<std::string>& overrides) {
  LoadedConfig out;
  out.source_path = source;
  auto fields = fields_of(out.config);
  for (const auto& f : fields) out.origins[f.key] = ValueOrigin{};
  if (root && !root.IsNull()) {
    SFTGO_CHECK(root.IsMap(), ErrorKind::kConfig, source,
                ": expected a mapping of sections (run:, model:, ...) at the top");
    apply_map(root, "", source, fields, out.origins);
  }
  for (const auto& spec : overrides) apply_override(spec, fields, out.origins);
  resolve_eta(out);
  validate_config(out.config);
  return out;
}

}  // namespace

LoadedConfig load_config_text(const std::string& yaml_text, const std::string& source_name,
                              const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    // YAML::Load reads the first document only, so anything after a `---` would be silently
    // ignored; YAML::LoadAll loops forever on a stray ',' (yaml-cpp 0.7 yields an empty document
    // without consuming it; found by fuzz/fuzz_config.cpp). So: at most two parser steps here.
    std::istringstream in(yaml_text);
    YAML::Parser parser(in);
    DocumentStarts docs;
    parser.HandleNextDocument(docs);
    if (parser.HandleNextDocument(docs) && docs.starts.size() >= 2) {
      const YAML::Mark& second = docs.starts[1];
      SFTGO_CHECK(second.pos != docs.starts[0].pos, ErrorKind::kConfig, source_name, ":", second.line + 1,
                  ": invalid YAML: the parser cannot get past column ", second.column + 1,
                  " (a stray ',' or flow indicator?)");
      SFTGO_FAIL_HINT(ErrorKind::kConfig, "put every section in one document (remove the '---')", source_name, ":",
                      second.line + 1, ": a second YAML document; a config is one document");
    }
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    SFTGO_FAIL(ErrorKind::kConfig, source_name, ":", e.mark.line + 1, ": invalid YAML: ", e.msg);
  }
  return load_from_node(root, source_name, overrides);
}

LoadedConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (path.empty()) return load_from_node(YAML::Node(), "", overrides);
  return load_config_text(read_file(path), path, overrides);
}

}  // namespace sftgo
