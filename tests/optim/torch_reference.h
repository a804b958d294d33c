// Runs reference computations in PyTorch for the parity tests.
//
// run_torch() writes a Python script to a temporary file and runs it with
// /usr/bin/python3 (Debian's python3-torch lives there, not in whatever
// `python3` a PATH finds). The script must print NO_TORCH and exit 0 when
// `import torch` fails (torch_preamble() does); run_torch() then returns
// nullopt, and the caller skips with GTEST_SKIP. Anything else that goes
// wrong (no interpreter at /usr/bin/python3 also counts as "no torch") throws
// std::runtime_error with the script's output, so a broken script fails the
// test instead of skipping it.
// Blocking: waits for the interpreter (about a second, mostly importing torch).
#pragma once

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace dtrain::optim::testing {

inline constexpr const char* kPython = "/usr/bin/python3";

inline std::string torch_preamble() {
  return "import sys\n"
         "try:\n"
         "    import torch\n"
         "except Exception:\n"
         "    print('NO_TORCH')\n"
         "    sys.exit(0)\n"
         "torch.set_num_threads(1)\n";
}

// A Python list literal whose values round-trip exactly to the same floats.
inline std::string python_list(std::span<const float> values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    out += fmt::format("{}{:.9g}", i == 0 ? "" : ", ", values[i]);
  }
  return out + "]";
}

// The script's standard output, or nullopt when torch is not available.
inline std::optional<std::string> run_torch(const std::string& script) {
  if (::access(kPython, X_OK) != 0) return std::nullopt;
  char path[] = "/tmp/dtrain_torch_reference_XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) throw std::runtime_error("run_torch: cannot create a temporary file");
  const bool written =
      ::write(fd, script.data(), script.size()) == static_cast<ssize_t>(script.size());
  ::close(fd);
  if (!written) {
    ::unlink(path);
    throw std::runtime_error("run_torch: cannot write the script");
  }
  const std::string command = fmt::format("{} {} 2>&1", kPython, path);
  FILE* pipe = ::popen(command.c_str(), "r");
  std::string output;
  if (pipe != nullptr) {
    char buffer[4096];
    size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  }
  const int status = pipe != nullptr ? ::pclose(pipe) : -1;
  ::unlink(path);
  if (output.rfind("NO_TORCH", 0) == 0) return std::nullopt;
  if (status != 0) {
    throw std::runtime_error(fmt::format("run_torch: the script failed ({}):\n{}", status, output));
  }
  return output;
}

// Whitespace-separated numbers, one line per row.
inline std::vector<std::vector<float>> parse_rows(const std::string& text) {
  std::vector<std::vector<float>> rows;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::vector<float> row;
    double value = 0;
    while (fields >> value) row.push_back(static_cast<float>(value));
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace dtrain::optim::testing
