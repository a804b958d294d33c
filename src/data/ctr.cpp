#include "data/ctr.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace dtrain::data {

namespace {

constexpr int64_t kMaxVocabulary = int64_t{1} << 26;
// Float32 represents every integer up to 2^24 exactly.
constexpr int64_t kMaxHashBuckets = int64_t{1} << 24;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 53 random bits: the Zipf tail needs more resolution
// than Rng::uniform()'s 24 bits (ids beyond rank ~10^4 have p < 2^-24).
double uniform53(Rng& rng) { return static_cast<double>(rng.next_u64() >> 11) * 0x1.0p-53; }

// Inverse-CDF sampler of the Zipf distribution P(k) ~ (k + 1)^-s on
// [0, vocabulary): the unnormalised cumulative sums, searched by binary search.
class ZipfSampler {
 public:
  ZipfSampler(int64_t vocabulary, double exponent) : cumulative_(static_cast<size_t>(vocabulary)) {
    double sum = 0.0;
    for (size_t k = 0; k < cumulative_.size(); ++k) {
      sum += std::pow(static_cast<double>(k + 1), -exponent);
      cumulative_[k] = sum;
    }
  }

  int64_t draw(Rng& rng) const {
    const double target = uniform53(rng) * cumulative_.back();
    const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), target);
    // target < back() always; the clamp only guards against rounding.
    return std::min<int64_t>(it - cumulative_.begin(),
                             static_cast<int64_t>(cumulative_.size()) - 1);
  }

 private:
  std::vector<double> cumulative_;
};

CtrSplit make_split(int64_t samples, const CtrOptions& o, const CtrGeneratingModel& model,
                    const ZipfSampler& zipf, Rng& rng) {
  Tensor features = Tensor::empty({samples, o.fields});
  std::vector<int64_t> labels(static_cast<size_t>(samples));
  std::vector<float> probability(static_cast<size_t>(samples));
  float* x = features.data();
  const auto buckets = static_cast<uint64_t>(o.hash_buckets);
  for (int64_t i = 0; i < samples; ++i) {
    double logit = model.bias;
    for (int64_t f = 0; f < o.fields; ++f) {
      const auto id = static_cast<uint64_t>(zipf.draw(rng));
      const uint64_t bucket = ctr_hash(static_cast<uint64_t>(f), id) % buckets;
      x[i * o.fields + f] = static_cast<float>(bucket);
      logit += static_cast<double>(model.weights[bucket]);
    }
    const double p = 1.0 / (1.0 + std::exp(-logit));
    probability[static_cast<size_t>(i)] = static_cast<float>(p);
    labels[static_cast<size_t>(i)] = uniform53(rng) < p ? 1 : 0;
  }
  return CtrSplit{TensorDataset(std::move(features), std::move(labels), 2), std::move(probability)};
}

}  // namespace

void check_ctr_options(const CtrOptions& o) {
  auto fail = [](const char* option, auto value, const char* bound) {
    throw UsageError(fmt::format("ctr data: {} = {} is out of range: {}", option, value, bound));
  };
  if (o.fields < 1) fail("fields", o.fields, "needs at least 1");
  if (o.vocabulary < 1 || o.vocabulary > kMaxVocabulary) {
    fail("vocabulary", o.vocabulary, "needs 1 to 2^26 (67108864) ids per field");
  }
  if (!(o.zipf_exponent > 0.0) || !std::isfinite(o.zipf_exponent)) {
    fail("zipf_exponent", o.zipf_exponent, "needs a finite exponent > 0");
  }
  if (o.hash_buckets < 1 || o.hash_buckets > kMaxHashBuckets) {
    fail("hash_buckets", o.hash_buckets,
         "needs 1 to 2^24 (16777216) buckets, the integers float32 features hold exactly");
  }
  if (o.train_samples < 1) fail("train_samples", o.train_samples, "needs at least 1");
  if (o.test_samples < 0) fail("test_samples", o.test_samples, "must not be negative");
  if (!(o.weight_stddev >= 0.0) || !std::isfinite(o.weight_stddev)) {
    fail("weight_stddev", o.weight_stddev, "needs a finite value >= 0");
  }
  if (!std::isfinite(o.bias)) fail("bias", o.bias, "needs a finite value");
}

uint64_t ctr_hash(uint64_t field, uint64_t id) {
  return mix64(mix64((field + 1) * 0x9E3779B97F4A7C15ULL) + id);
}

CtrGeneratingModel make_ctr_model(const CtrOptions& options) {
  check_ctr_options(options);
  Rng root(options.seed);
  Rng rng = root.split();
  CtrGeneratingModel model;
  model.bias = options.bias;
  model.weights.resize(static_cast<size_t>(options.hash_buckets));
  const auto stddev = static_cast<float>(options.weight_stddev);
  for (float& w : model.weights) w = rng.normal(0.0f, stddev);
  return model;
}

CtrData make_ctr(const CtrOptions& options) {
  const CtrGeneratingModel model = make_ctr_model(options);
  Rng root(options.seed);
  root.split();  // the weights' generator, used by make_ctr_model
  Rng train_rng = root.split();
  Rng test_rng = root.split();
  const ZipfSampler zipf(options.vocabulary, options.zipf_exponent);
  CtrData data;
  data.train = make_split(options.train_samples, options, model, zipf, train_rng);
  data.test = make_split(options.test_samples, options, model, zipf, test_rng);
  return data;
}

}  // namespace dtrain::data
