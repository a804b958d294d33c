// Synthetic click-through-rate data drawn from a known logistic model over
// hashed categorical features, so that a learned model can be compared with
// the model that generated the clicks.
//
// Generation (every step from Rng(seed), so a seed gives the same data on
// every platform):
//   1. Each of `fields` categorical fields draws a raw id in [0, vocabulary)
//      from a Zipf distribution, P(id = k) proportional to (k + 1)^-s with
//      s = zipf_exponent (id 0 is the most frequent, as in real logs, where a
//      few values carry most of the traffic and a long tail is rarely seen).
//   2. The pair (field, id) is hashed into one table shared by all fields:
//      bucket = ctr_hash(field, id) mod hash_buckets (ctr_hash below). Ids of
//      different fields that land in one bucket share it, as in production
//      feature hashing.
//   3. The generating model holds one weight per bucket, w[b] ~ N(0,
//      weight_stddev^2), and a bias; a sample with buckets b_1..b_F clicks
//      with probability p = sigmoid(bias + sum_f w[b_f]), and its label is
//      Bernoulli(p). An embedding per bucket followed by an MLP can represent
//      this model exactly (one embedding coordinate carrying w).
// The weights, the training samples and the test samples come from three
// generators split off Rng(seed) in that order, so the training set does not
// depend on the number of test samples.
//
// Sample i of a split has features [fields] holding its buckets as
// integer-valued floats (exact: hash_buckets <= 2^24), label 1 (click) or 0,
// and click_probability[i] = its p under the generating model, from which the
// generating model's own AUC on the same samples follows.
//
// Cost: a table of 8 bytes per vocabulary entry for the Zipf inverse CDF, 4
// bytes per bucket for the weights, O(samples * fields * log vocabulary)
// time.
// Thread safety: pure functions. Errors: UsageError naming the option and
// its bound for sizes out of range.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset.h"

namespace dtrain::data {

struct CtrOptions {
  int64_t fields = 8;              // categorical fields per sample, >= 1
  int64_t vocabulary = 1'000'000;  // raw ids per field, in [1, 2^26]
  double zipf_exponent = 1.8;      // s > 0: larger means fewer ids carry the traffic
  int64_t hash_buckets = 1 << 20;  // rows of the shared table, in [1, 2^24]
  int64_t train_samples = 1'000'000;
  int64_t test_samples = 100'000;
  double weight_stddev = 0.5;  // of the generating model's per-bucket weights, >= 0
  double bias = -1.5;          // of the generating model (click rate about 0.17 with the defaults)
  uint64_t seed = 1;           // the generating model and the samples
};

// One split of the generated data.
struct CtrSplit {
  TensorDataset samples;                 // features [n, fields], labels {0, 1}
  std::vector<float> click_probability;  // [n], the generating model's p per sample
};

struct CtrData {
  CtrSplit train;
  CtrSplit test;
};

// The generating model: one weight per bucket and a bias.
struct CtrGeneratingModel {
  std::vector<float> weights;  // [hash_buckets]
  double bias = 0.0;
};

// The 64-bit hash of (field, raw id): with mix64 the finalizer of
// splitmix64 (Steele, Lea & Flood 2014; a bijection on 64-bit words),
//   ctr_hash(field, id) = mix64(mix64((field + 1) * 0x9E3779B97F4A7C15) + id).
// The inner term is a per-field random offset; since mix64 is a bijection,
// distinct (field, id) pairs collide only when their offsets differ by the
// difference of their ids.
uint64_t ctr_hash(uint64_t field, uint64_t id);

// Throws the UsageError make_ctr() would for options out of range.
void check_ctr_options(const CtrOptions& options);

// The weights and bias that generate the clicks of `options`.
CtrGeneratingModel make_ctr_model(const CtrOptions& options);

// The training and test splits of `options` (see the generation above).
CtrData make_ctr(const CtrOptions& options);

}  // namespace dtrain::data
