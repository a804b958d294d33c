// Partitioners: split a labelled dataset's sample indices among the workers
// of a simulated federated or data-parallel job, IID or deliberately skewed,
// so that training can be studied on imbalanced and non-IID data.
//
// Kinds (docs/partitioning.md has the details and example tables):
//   "iid"        shuffled, then cut into equal parts (sizes differ by at most 1);
//   "label"      pathological label skew (McMahan et al. 2017): each worker
//                holds samples of at most `classes_per_worker` classes;
//   "dirichlet"  per class, the share of each worker is drawn from
//                Dirichlet(alpha) (Hsu, Qi & Brown 2019); small alpha is skewed,
//                large alpha approaches IID;
//   "quantity"   IID labels, but worker sizes proportional to lognormal(0,
//                quantity_sigma) draws (quantity skew);
//   "shards"     the FedAvg paper's own pathological split (McMahan et al.
//                2017): the label-sorted samples cut into workers x
//                shards_per_worker equal shards, shards_per_worker dealt to
//                each worker at random (a shard may straddle two labels).
//
// Every partition is disjoint and covers each index in [0, labels.size())
// exactly once; a worker may get an empty list (fewer samples than workers,
// or a small alpha). Each worker's list is sorted ascending: a set, visited
// in whatever order its loader chooses. The result depends only on the
// labels and the options: the same seed gives the same partition on every
// platform (all randomness comes from Rng, no std distributions).
//
// Thread safety: pure functions; any thread may call them.
// Errors: ConfigError naming the option for a bad option (unknown kind,
// workers < 1, classes_per_worker outside [1, num_classes], alpha <= 0,
// quantity_sigma < 0, shards_per_worker < 1); UsageError for labels outside [0, num_classes) or
// index lists that do not fit the labels. Nothing blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/rng.h"

namespace dtrain::data {

struct PartitionOptions {
  // "iid", "label", "dirichlet", "quantity" or "shards" (see above).
  std::string kind = "iid";
  // Number of parts; >= 1. May exceed the number of samples.
  int64_t workers = 1;
  // Seeds every random choice; equal seeds give equal partitions.
  uint64_t seed = 0;
  // "label" only: classes per worker, in [1, num_classes]. The job also needs
  // workers * classes_per_worker >= the number of classes present, or some
  // class could go to nobody.
  int64_t classes_per_worker = 2;
  // "dirichlet" only: concentration, > 0. 0.1 is strongly skewed, 100 is
  // close to IID.
  double alpha = 0.5;
  // "quantity" only: sigma of the lognormal size weights, >= 0 (0: equal sizes).
  double quantity_sigma = 1.0;
  // "shards" only: shards per worker, >= 1 (the paper's 2: 100 clients, 200
  // shards of 300 MNIST samples).
  int64_t shards_per_worker = 2;
};

// The index lists of the workers: result[w] holds worker w's sample indices.
std::vector<std::vector<int64_t>> partition(std::span<const int64_t> labels, int64_t num_classes,
                                            const PartitionOptions& options);

// Counts per worker and class: result[w][c] = number of indices in parts[w]
// whose label is c.
std::vector<std::vector<int64_t>> label_histogram(std::span<const std::vector<int64_t>> parts,
                                                  std::span<const int64_t> labels,
                                                  int64_t num_classes);

// A right-aligned text table of a label_histogram: one row per worker, one
// column per class (headed c0, c1, ...), a total column and a total row.
// Every row ends with '\n'. UsageError when the rows differ in length.
std::string format_histogram(const std::vector<std::vector<int64_t>>& histogram);

// A Gamma(shape, 1) draw (Marsaglia & Tsang 2000; shape < 1 through the
// boost Gamma(a) = Gamma(a + 1) * U^(1/a)). shape > 0. Exposed for tests.
double sample_gamma(Rng& rng, double shape);

// A draw from the symmetric Dirichlet(alpha, ..., alpha) over k >= 1 parts:
// non-negative, sums to 1 (up to rounding), at least one part positive even
// when every Gamma draw underflows.
std::vector<double> sample_dirichlet(Rng& rng, int64_t k, double alpha);

}  // namespace dtrain::data
