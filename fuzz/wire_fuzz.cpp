// libFuzzer target: untrusted bytes into the wire decoder and the rendezvous
// record decoder. Any exception other than DataError, any crash, leak or
// sanitizer report is a finding. Setup shared with the corpus replay test
// (tests/comm/wire_format_test.cpp): job "fuzz", world size 8, any receiver;
// the first input byte's low bit selects the job secret "fuzz-secret".
//
// Build (clang only):
//   CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DDTRAIN_FUZZ=ON -DDTRAIN_BUILD_TESTS=OFF
//   ninja -C build-fuzz wire_fuzz
//   build-fuzz/fuzz/wire_fuzz -max_total_time=60 fuzz/corpus/wire
#include <cstddef>
#include <cstdint>
#include <span>

#include "comm/rendezvous/rendezvous.h"
#include "comm/wire/auth.h"
#include "comm/wire/wire.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dtrain::comm;
  static const JobAuth plain("fuzz", "");
  static const JobAuth secret("fuzz", "fuzz-secret");
  const auto bytes = std::as_bytes(std::span(data, size));
  const JobAuth& auth = (size > 0 && (data[0] & 1) != 0) ? secret : plain;
  const wire::FrameLimits limits{plain.job_id(), 8, wire::kAnyReceiver, 1 << 20};
  try {
    wire::decode_frame(bytes, limits, auth);
  } catch (const dtrain::DataError&) {
  }
  try {
    decode_endpoints(bytes, 64);
  } catch (const dtrain::DataError&) {
  }
  return 0;
}
