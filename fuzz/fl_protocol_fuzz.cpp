// libFuzzer target: untrusted bytes into the federated payload decoder
// (fl/fl_protocol.h). Any exception other than DataError, any crash, leak or
// sanitizer report is a finding; a payload that decodes must encode back to
// the same bytes.
//
// Build (clang only):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DDTRAIN_FUZZ=ON -DDTRAIN_BUILD_TESTS=OFF
//   ninja -C build-fuzz fl_protocol_fuzz
//   build-fuzz/fuzz/fl_protocol_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "core/error.h"
#include "fl/fl_protocol.h"

namespace {

std::vector<std::byte> encode(const dtrain::fl::FlMessage& m) {
  using dtrain::fl::FlKind;
  switch (m.kind) {
    case FlKind::kJoin:
      return dtrain::fl::encode_join(m.client);
    case FlKind::kTask:
      return dtrain::fl::encode_task(m.task);
    case FlKind::kUpdate:
      return dtrain::fl::encode_update(m.update);
    case FlKind::kWait:
      return dtrain::fl::encode_wait(m.rounds_done);
    case FlKind::kDone:
      return dtrain::fl::encode_done(m.rounds_done);
  }
  return {};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto bytes = std::as_bytes(std::span(data, size));
  try {
    const dtrain::fl::FlMessage m = dtrain::fl::decode_fl_message(bytes);
    const std::vector<std::byte> again = encode(m);
    if (again.size() != bytes.size() || !std::equal(again.begin(), again.end(), bytes.begin())) {
      std::abort();
    }
  } catch (const dtrain::DataError&) {
  }
  return 0;
}
