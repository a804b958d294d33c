// The arithmetic of one DP-SGD step (Abadi et al. 2016, "Deep Learning with
// Differential Privacy", Algorithm 1) that needs no tensors: the per-sample
// clip factors and the Gaussian noise. Per-sample gradient norms come from
// nn/per_sample_gradients.h; the trainer (train/dp_sgd.h) strings the step
// together.
//
// A step: each sampled example i has gradient g_i with norm n_i; it is
// clipped to g_i * c_i with c_i = min(1, C / n_i), so every clipped gradient
// has norm <= C; the clipped sum gets N(0, sigma^2 C^2) noise per coordinate
// and is divided by the expected batch size q N (Opacus's convention, which
// keeps the divisor independent of the sampled batch, so it reveals nothing).
//
// Ownership: plain functions over caller-owned spans. Thread safety:
// reentrant (the Rng is the caller's). Errors: UsageError naming the
// argument for a max_grad_norm <= 0 or a negative / non-finite stddev or
// squared norm. Nothing blocks.
#pragma once

#include <span>
#include <vector>

#include "core/rng.h"

namespace dtrain::privacy {

// c_i = min(1, C / sqrt(squared_norms[i])), computed in double and rounded
// down to float so that c_i * n_i <= C * (1 + 2^-23) whatever the rounding.
// A zero norm gives 1.
std::vector<float> clip_factors(std::span<const double> squared_norms, double max_grad_norm);

// values[j] += N(0, stddev^2), in order, pairs of values from Marsaglia's
// polar method on the Rng's 53-bit uniforms, so a seeded Rng gives the same
// noise wherever libm's log agrees (sqrt is exact-rounded by IEEE 754; the
// same caveat applies to Rng::normal()).
// stddev 0 leaves `values` unchanged and draws nothing.
void add_gaussian_noise(std::span<float> values, double stddev, Rng& rng);

// The standard deviation each of `workers` contributors adds so that the sum
// of their independent noises has standard deviation sigma * C:
// sigma * C / sqrt(workers). workers >= 1.
double noise_stddev_per_worker(double noise_multiplier, double max_grad_norm, int workers);

}  // namespace dtrain::privacy
