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

// Distinct values 0.1 apart in a shuffled order from `seed`: no ties in max
// pooling. Centred: 0.1 * (i - n/2 + 0.5), so none is within 0.05 of zero
// (no input at ReLU's kink); otherwise 0.1 * i.
enum class Ramp { kFromZero, kCentred };
Tensor shuffled_ramp(const Shape& shape, uint64_t seed, Ramp ramp = Ramp::kFromZero);

// Same shape and the same bits in every element (NaN payloads and signed
// zeros included).
bool same_bits(const Tensor& a, const Tensor& b);

}  // namespace dtrain::testing
