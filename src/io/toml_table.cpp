#include "io/toml_table.h"

#include <fmt/format.h>

#include <sstream>

namespace dtrain::io {

namespace {

std::string describe(const toml::node& node) {
  std::ostringstream os;
  os << node.type();
  return os.str();
}

// Sets root[dotted key] = value, creating tables on the way.
void apply_override(toml::table& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    throw ConfigError("--set", assignment, 0, "expected key=value");
  }
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  toml::table parsed;
  try {
    parsed = toml::parse("value = " + text);
  } catch (const toml::parse_error&) {
    parsed.insert_or_assign("value", text);
  }
  toml::table* table = &root;
  std::string_view rest = key;
  for (auto dot = rest.find('.'); dot != std::string_view::npos; dot = rest.find('.')) {
    const std::string part(rest.substr(0, dot));
    toml::node* node = table->get(part);
    if (node == nullptr) {
      table->insert(part, toml::table{});
      node = table->get(part);
    }
    rest.remove_prefix(dot + 1);
    if (toml::array* array = node->as_array()) {
      // "model.layers.1.out_features": an index into an array of tables.
      const auto next = rest.find('.');
      const std::string index_text(rest.substr(0, next));
      size_t index = 0;
      try {
        size_t used = 0;
        index = std::stoul(index_text, &used);
        if (used != index_text.size()) throw std::invalid_argument(index_text);
      } catch (const std::exception&) {
        throw ConfigError(
            "--set", key, 0,
            "'" + part + "' is an array: expected an index, got '" + index_text + "'");
      }
      if (index >= array->size() || next == std::string_view::npos) {
        throw ConfigError("--set", key, 0,
                          fmt::format("'{}' has {} entries; expected {}.<index>.<key>", part,
                                      array->size(), part));
      }
      node = array->get(index);
      rest.remove_prefix(next + 1);
    }
    if (!node->is_table()) throw ConfigError("--set", key, 0, "'" + part + "' is not a table");
    table = node->as_table();
  }
  table->insert_or_assign(std::string(rest), *parsed.get("value"));
}

}  // namespace

int64_t line_of(const toml::node& node) { return static_cast<int64_t>(node.source().begin.line); }

toml::table parse_toml(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw ConfigError(source, "(syntax)", static_cast<int64_t>(e.source().begin.line),
                      std::string(e.description()));
  }
  for (const std::string& assignment : overrides) apply_override(root, assignment);
  return root;
}

TomlTable::TomlTable(const toml::table* table, std::string name, std::string file)
    : table_(table),
      file_(file),
      lines_(std::move(file), std::move(name), table != nullptr ? line_of(*table) : 0) {}

const toml::node* TomlTable::node(std::string_view key) {
  known_.emplace(key);
  if (table_ == nullptr) return nullptr;
  const toml::node* n = table_->get(key);
  if (n != nullptr) lines_.add(key, line_of(*n));
  return n;
}

bool TomlTable::present(std::string_view key) const {
  return table_ != nullptr && table_->get(key) != nullptr;
}

void TomlTable::wrong_type(const toml::node& node, std::string_view key,
                           const char* expected) const {
  throw ConfigError(file_, lines_.full(key), line_of(node),
                    fmt::format("expected {}, got {}", expected, describe(node)));
}

bool TomlTable::get_int(std::string_view key, int64_t& out, bool allow_negative) {
  const toml::node* n = node(key);
  if (n == nullptr) return false;
  const auto v = n->value_exact<int64_t>();
  if (!v) wrong_type(*n, key, "an integer");
  if (*v < 0 && !allow_negative) {
    throw ConfigError(file_, lines_.full(key), line_of(*n),
                      fmt::format("must not be negative, got {}", *v));
  }
  out = *v;
  return true;
}

const toml::table* TomlTable::table(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return nullptr;
  if (!n->is_table()) {
    throw ConfigError(file_, lines_.full(key), line_of(*n),
                      fmt::format("expected a table ([{}])", lines_.full(key)));
  }
  return n->as_table();
}

const toml::array* TomlTable::array_of_tables(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return nullptr;
  const toml::array* array = n->as_array();
  if (array == nullptr) {
    throw ConfigError(file_, lines_.full(key), line_of(*n),
                      fmt::format("expected [[{}]] tables", lines_.full(key)));
  }
  return array;
}

void TomlTable::finish() const {
  if (table_ == nullptr) return;
  for (const auto& [key, node] : *table_) {
    if (known_.count(key.str()) == 0) {
      throw ConfigError(file_, lines_.full(key.str()), line_of(node),
                        fmt::format("unknown key (known: {})", fmt::join(known_, ", ")));
    }
  }
}

}  // namespace dtrain::io
