# Writes OUTPUT, a C++ source defining the bytes of INPUT (the dashboard page)
# as dtrain::obs::detail::kDashboardPage / kDashboardPageSize.
# Usage: cmake -DINPUT=index.html -DOUTPUT=dashboard_page.cpp -P embed.cmake
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hex_length)
math(EXPR size "${hex_length} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by embed.cmake; do not edit.\n"
  "#include <cstddef>\n"
  "namespace dtrain::obs::detail {\n"
  "extern const unsigned char kDashboardPage[];\n"
  "extern const size_t kDashboardPageSize;\n"
  "const unsigned char kDashboardPage[] = {\n${bytes}0x00};\n"
  "const size_t kDashboardPageSize = ${size};\n"
  "}  // namespace dtrain::obs::detail\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
