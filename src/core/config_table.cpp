#include "core/config_table.h"

#include <fmt/format.h>

namespace dtrain {

void KeyLines::add(std::string_view key, int64_t line, std::string full) {
  places_[std::string(key)] = Place{line, std::move(full)};
}

std::string KeyLines::full(std::string_view key) const {
  const auto it = places_.find(key);
  if (it != places_.end() && !it->second.full.empty()) return it->second.full;
  if (table_.empty()) return std::string(key);
  return table_ + "." + std::string(key);
}

int64_t KeyLines::line(std::string_view key) const {
  const auto it = places_.find(key);
  return it != places_.end() && it->second.line > 0 ? it->second.line : table_line_;
}

void KeyLines::merge(const KeyLines& other) {
  if (file_.empty()) file_ = other.file_;
  for (const auto& [key, place] : other.places_) add(other.full(key), place.line);
}

void AliasedTable::twice(std::string_view key) const {
  throw lines_.error(
      key, fmt::format("given twice: also as the deprecated '{}' (line {}); keep "
                       "only the one in [{}]",
                       legacy_.lines().full(key), legacy_.lines().line(key), lines_.table()));
}

void AliasedTable::note(std::string_view key) {
  const KeyLines& old = legacy_.lines();
  const std::string old_key = old.full(key);
  const int64_t line = old.line(key);
  lines_.add(key, line, old_key);
  const std::string place = line > 0 ? fmt::format("{}:{}", old.file(), line) : old.file();
  notes_.push_back(fmt::format("{}: '{}' is deprecated: write it as '{}' in [{}]", place, old_key,
                               key, lines_.table()));
}

ConfigError KeyLines::error(std::string_view key, const std::string& problem) const {
  return ConfigError(file_.empty() ? "job" : file_, full(key), line(key), problem);
}

void check_choice(const KeyLines& where, std::string_view key, const std::string& value,
                  std::initializer_list<const char*> choices) {
  for (const char* c : choices) {
    if (value == c) return;
  }
  throw where.error(key, fmt::format("'{}' is not one of: {}", value, fmt::join(choices, ", ")));
}

}  // namespace dtrain
