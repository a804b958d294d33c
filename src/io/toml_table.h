// TOML job files as ConfigTables (core/config_table.h): parse_toml() reads
// the text and applies "--set" overrides; TomlTable reads one table's keys
// with their types and lines and, at finish(), rejects any key nobody read.
//
// Overrides ("train.epochs=3", "model.layers.1.out_features=10") are applied
// to the parsed tree before anything reads it, as if written in the file;
// their values are TOML values ("0.1", "true", "[1, 28, 28]") or, failing
// that, bare strings. Integers read into integer fields must not be
// negative.
// Errors: ConfigError naming the file (or "--set"), the dotted key and its
// line: a syntax error, a wrong type, a negative integer, an unknown key.
// Thread safety: a TomlTable is used by one thread; it borrows the
// toml::table, which must outlive it. Never blocks.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/config_table.h"

namespace dtrain::io {

// Parses `text` (named `source` in messages) and applies `overrides`.
toml::table parse_toml(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides);

class TomlTable final : public ConfigTable {
 public:
  // `table` may be null (the table is absent: every read finds nothing).
  // `name` is its dotted name ("distributed.ps"), "" for the root.
  TomlTable(const toml::table* table, std::string name, std::string file);

  bool read(std::string_view key, bool& out) override { return get(key, out); }
  bool read(std::string_view key, int64_t& out) override { return get(key, out); }
  bool read(std::string_view key, double& out) override { return get(key, out); }
  bool read(std::string_view key, std::string& out) override { return get(key, out); }
  bool read(std::string_view key, std::vector<std::string>& out) override { return get(key, out); }
  const KeyLines& lines() const override { return lines_; }

  // Any other field type: unsigned and narrower integers, float,
  // std::optional<T>, std::vector<int64_t> (positive integers).
  template <typename T>
  bool get(std::string_view key, T& out);

  // The sub-table `key` (nullptr when absent); ConfigError when `key` holds
  // something else. Marks the key as read.
  const toml::table* table(std::string_view key);
  // The array `key` ([[model.layers]]); nullptr when absent, ConfigError
  // when not an array (the caller checks its elements).
  const toml::array* array_of_tables(std::string_view key);
  // Marks `key` as read without reading it (another reader owns it).
  void allow(std::string_view key) { known_.emplace(key); }
  // Throws ConfigError for the first key that no read asked for.
  void finish() const;
  bool present(std::string_view key) const;

 private:
  const toml::node* node(std::string_view key);
  [[noreturn]] void wrong_type(const toml::node& node, std::string_view key,
                               const char* expected) const;
  bool get_int(std::string_view key, int64_t& out, bool allow_negative);

  const toml::table* table_;
  std::string file_;
  KeyLines lines_;
  std::set<std::string, std::less<>> known_;
};

int64_t line_of(const toml::node& node);

// ---------------------------------------------------------------- templates

namespace detail {
template <typename T>
struct is_optional : std::false_type {};
template <typename T>
struct is_optional<std::optional<T>> : std::true_type {};
}  // namespace detail

template <typename T>
bool TomlTable::get(std::string_view key, T& out) {
  if constexpr (detail::is_optional<T>::value) {
    typename T::value_type value{};
    if (!get(key, value)) return false;
    out = value;
    return true;
  } else {
    const toml::node* n = node(key);
    if (n == nullptr) return false;
    if constexpr (std::is_same_v<T, bool>) {
      const auto v = n->value_exact<bool>();
      if (!v) wrong_type(*n, key, "a boolean");
      out = *v;
    } else if constexpr (std::is_same_v<T, std::string>) {
      const auto v = n->value_exact<std::string>();
      if (!v) wrong_type(*n, key, "a string");
      out = *v;
    } else if constexpr (std::is_integral_v<T>) {
      int64_t v = 0;
      get_int(key, v, /*allow_negative=*/false);
      if (static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
        throw lines_.error(key, "is too large");
      }
      out = static_cast<T>(v);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (const auto v = n->value_exact<double>()) {
        out = static_cast<T>(*v);
      } else if (const auto i = n->value_exact<int64_t>()) {
        out = static_cast<T>(*i);
      } else {
        wrong_type(*n, key, "a number");
      }
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      const toml::array* array = n->as_array();
      if (array == nullptr) wrong_type(*n, key, "an array of integers");
      T values;
      for (const toml::node& element : *array) {
        const auto v = element.value_exact<int64_t>();
        if (!v || *v <= 0) {
          throw ConfigError(file_, lines_.full(key), line_of(element),
                            "expected an array of positive integers");
        }
        values.push_back(*v);
      }
      out = std::move(values);
    } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
      const toml::array* array = n->as_array();
      if (array == nullptr) wrong_type(*n, key, "an array of strings");
      T values;
      for (const toml::node& element : *array) {
        const auto v = element.value_exact<std::string>();
        if (!v) {
          throw ConfigError(file_, lines_.full(key), line_of(element),
                            "expected an array of strings");
        }
        values.push_back(*v);
      }
      out = std::move(values);
    } else {
      static_assert(sizeof(T) == 0, "TomlTable::get: unsupported field type");
    }
    return true;
  }
}

}  // namespace dtrain::io
