// Assertions on dtrain's errors: expect_error<E>(fn, message) expects fn()
// to throw E whose what() is exactly `message` (error messages are part of
// the contract: they name the thing and the difference); expect_error_naming
// only that it contains a part.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "tensor/tensor.h"

namespace dtrain::testing {

template <class E, class Fn>
void expect_error(Fn&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "expected an error: " << message;
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

// Expects fn() to throw E whose what() contains `part` (a field's name, say,
// where the rest of the message carries offsets and sizes).
template <class E, class Fn>
void expect_error_naming(Fn&& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "expected an error naming " << part;
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

template <class Fn>
void expect_usage_error(Fn&& fn, const std::string& message) {
  expect_error<UsageError>(std::forward<Fn>(fn), message);
}

// A tensor of standard normal values drawn from `rng`.
inline Tensor normal_tensor(Shape shape, Rng& rng) {
  Tensor t = Tensor::empty(std::move(shape));
  for (float& v : t.span()) v = rng.normal();
  return t;
}

}  // namespace dtrain::testing
