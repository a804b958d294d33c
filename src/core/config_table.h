// ConfigTable: one table of a job's configuration ("distributed.allreduce")
// as seen by the code that owns its keys. A strategy reads its options
// through it without knowing the file format (io/toml_table.h implements it
// over TOML; a test may implement it over a map).
//
// Reads leave `out` unchanged when the key is absent and return whether it
// was present; a value of the wrong type (or a negative integer) throws
// ConfigError naming the file, the dotted key and its line. error() builds a
// ConfigError for a key's value that the reader found wrong, at that key's
// line (the table's line when the key is absent), so that checks made after
// reading point at the right place.
//
// KeyLines keeps those places after the table is gone: a strategy's options
// are checked against the job (worker counts given on the command line) long
// after the file was read.
// Thread safety: a table is read by one thread. Never blocks.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace dtrain {

// Where the keys of a table were written: file, dotted key → line.
class KeyLines {
 public:
  KeyLines() = default;
  KeyLines(std::string file, std::string table, int64_t table_line)
      : file_(std::move(file)), table_(std::move(table)), table_line_(table_line) {}

  // `key` was read at `line`; `full` is its dotted name when it was written
  // elsewhere than in this table (a deprecated alias), else empty.
  void add(std::string_view key, int64_t line, std::string full = {});
  // The dotted name of `key` ("distributed.allreduce.bucket_bytes").
  std::string full(std::string_view key) const;
  // The line of `key`, else of the table, else 0.
  int64_t line(std::string_view key) const;
  ConfigError error(std::string_view key, const std::string& problem) const;
  // Adds every key of `other` under its dotted name (for a table of the
  // whole file, whose keys are dotted names).
  void merge(const KeyLines& other);
  const std::string& file() const { return file_; }
  const std::string& table() const { return table_; }

 private:
  std::string file_;
  std::string table_;
  int64_t table_line_ = 0;
  struct Place {
    int64_t line = 0;
    std::string full;  // empty: table_.key
  };
  std::map<std::string, Place, std::less<>> places_;
};

class ConfigTable {
 public:
  virtual ~ConfigTable() = default;

  virtual bool read(std::string_view key, bool& out) = 0;
  virtual bool read(std::string_view key, int64_t& out) = 0;
  virtual bool read(std::string_view key, double& out) = 0;
  virtual bool read(std::string_view key, std::string& out) = 0;
  virtual bool read(std::string_view key, std::vector<std::string>& out) = 0;

  // The places of every key read so far (and of the table).
  virtual const KeyLines& lines() const = 0;
  ConfigError error(std::string_view key, const std::string& problem) const {
    return lines().error(key, problem);
  }
};

// A table read through another, older one: a key absent from `own` is read
// from `legacy` (the flat keys of [distributed] that a per-strategy table
// replaced), and each such use adds a deprecation note to `notes` naming
// the file, line, old key and its new place. A key in both is a ConfigError.
class AliasedTable final : public ConfigTable {
 public:
  AliasedTable(ConfigTable& own, ConfigTable& legacy, std::vector<std::string>& notes)
      : own_(own), legacy_(legacy), notes_(notes), lines_(own.lines()) {}

  bool read(std::string_view key, bool& out) override { return pick(key, out); }
  bool read(std::string_view key, int64_t& out) override { return pick(key, out); }
  bool read(std::string_view key, double& out) override { return pick(key, out); }
  bool read(std::string_view key, std::string& out) override { return pick(key, out); }
  bool read(std::string_view key, std::vector<std::string>& out) override { return pick(key, out); }
  const KeyLines& lines() const override { return lines_; }

 private:
  template <typename T>
  bool pick(std::string_view key, T& out) {
    if (own_.read(key, out)) {
      lines_.add(key, own_.lines().line(key));
      T ignored{};
      if (legacy_.read(key, ignored)) twice(key);
      return true;
    }
    if (!legacy_.read(key, out)) return false;
    note(key);
    return true;
  }
  void note(std::string_view key);
  [[noreturn]] void twice(std::string_view key) const;

  ConfigTable& own_;
  ConfigTable& legacy_;
  std::vector<std::string>& notes_;
  KeyLines lines_;
};

// Throws where.error(key) unless `value` is one of `choices`.
void check_choice(const KeyLines& where, std::string_view key, const std::string& value,
                  std::initializer_list<const char*> choices);

}  // namespace dtrain
