// gradcheck: compares the analytic gradients that backward() computes with
// central finite differences, for every element of every input.
//
// The function under test maps leaf Variables to a Variable of any shape;
// gradcheck reduces it to a scalar L = sum(f(x) * R) with a fixed random R
// (so every output element matters with a distinct weight), runs backward()
// once, then evaluates L at x +/- eps for each input element under
// NoGradGuard. Row-sparse gradients are folded with dense_grad().
//
// Float32 tolerances: |analytic - numeric| <= atol + rtol * |numeric|. The
// caller avoids kinks (relu at 0, ties in max pooling) by construction of
// the inputs. `f` must be deterministic: seed any Rng inside it.
// Thread safety: none needed (single-threaded test helper). Throws whatever
// `f` throws.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "autograd/variable.h"
#include "tensor/tensor.h"

namespace dtrain::testing {

struct GradcheckOptions {
  float eps = 1e-2f;
  float atol = 2e-3f;
  float rtol = 2e-2f;
  uint64_t seed = 1234;
  // Which inputs to check (empty: all); an input not checked is a constant.
  std::vector<bool> check;
};

using GradFn = std::function<Variable(const std::vector<Variable>&)>;

::testing::AssertionResult gradcheck(const GradFn& f, const std::vector<Tensor>& inputs,
                                     const GradcheckOptions& options = {});

// A tensor of the given shape with elements uniform in [low, high) from `seed`.
Tensor random_tensor(const Shape& shape, uint64_t seed, float low = -1.0f, float high = 1.0f);

}  // namespace dtrain::testing
