#include "data/partition.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "core/error.h"
#include "data/sampler.h"

namespace dtrain::data {

namespace {

using Parts = std::vector<std::vector<int64_t>>;

constexpr const char* kKnownKinds = "iid, label, dirichlet, quantity, shards";

size_t at(int64_t i) { return static_cast<size_t>(i); }

// Uniform in (0, 1] with 53 random bits, so log() of it is finite.
double open_uniform(Rng& rng) {
  return (static_cast<double>(rng.next_u64() >> 11) + 1.0) * 0x1.0p-53;
}

void shuffle(std::vector<int64_t>& values, Rng& rng) {
  for (size_t i = values.size(); i > 1; --i) {
    const auto j = static_cast<size_t>(rng.below(i));
    std::swap(values[i - 1], values[j]);
  }
}

// log of a Gamma(shape, 1) draw. Marsaglia & Tsang (2000) for shape >= 1:
// d = shape - 1/3, c = 1 / sqrt(9d); draw x ~ N(0,1), v = (1 + c x)^3, accept
// d v with the squeeze u < 1 - 0.0331 x^4 or the full test
// log u < x^2 / 2 + d (1 - v + log v). For shape < 1 the boost
// Gamma(a) = Gamma(a + 1) * U^(1/a) is applied in log space, where tiny
// shapes (U^(1/a) underflows to 0) stay representable.
double log_gamma_sample(Rng& rng, double shape) {
  if (shape < 1.0) return log_gamma_sample(rng, shape + 1.0) + std::log(open_uniform(rng)) / shape;
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = rng.normal();
    double v = 1.0 + c * x;
    if (v <= 0.0) continue;
    v = v * v * v;
    const double u = open_uniform(rng);
    if (u < 1.0 - 0.0331 * x * x * x * x) return std::log(d * v);
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return std::log(d * v);
  }
}

// Cuts `order` into consecutive blocks of `sizes` (which sum to its length).
Parts cut(const std::vector<int64_t>& order, const std::vector<int64_t>& sizes) {
  Parts parts(sizes.size());
  size_t next = 0;
  for (size_t w = 0; w < sizes.size(); ++w) {
    parts[w].assign(order.begin() + static_cast<std::ptrdiff_t>(next),
                    order.begin() + static_cast<std::ptrdiff_t>(next + at(sizes[w])));
    next += at(sizes[w]);
  }
  DTRAIN_CHECK(next == order.size(), "partition: block sizes add up to {}, not {}", next,
               order.size());
  return parts;
}

// Splits `total` into parts proportional to `weights` (non-negative, positive
// sum) by largest remainder; ties go to the lower index.
std::vector<int64_t> apportion(int64_t total, const std::vector<double>& weights) {
  double sum = 0.0;
  for (const double w : weights) sum += w;
  std::vector<int64_t> sizes(weights.size(), 0);
  std::vector<std::pair<double, size_t>> remainders;
  int64_t given = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double exact = static_cast<double>(total) * weights[i] / sum;
    sizes[i] = std::min(total, static_cast<int64_t>(std::floor(exact)));
    given += sizes[i];
    remainders.emplace_back(exact - static_cast<double>(sizes[i]), i);
  }
  std::stable_sort(remainders.begin(), remainders.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  // Rounding may leave given slightly above total; take back from the largest.
  while (given > total) {
    auto largest = std::max_element(sizes.begin(), sizes.end());
    --*largest;
    --given;
  }
  for (size_t k = 0; given < total; k = (k + 1) % remainders.size()) {
    ++sizes[remainders[k].second];
    ++given;
  }
  return sizes;
}

// "iid": the sampler's epoch-0 permutation, sharded as ShardedSampler does,
// so sizes differ by at most one.
Parts partition_iid(int64_t n, const PartitionOptions& options) {
  const std::vector<int64_t> order = shuffled_order(n, options.seed, 0);
  std::vector<int64_t> sizes;
  for (int64_t w = 0; w < options.workers; ++w) {
    sizes.push_back(shard_range(n, options.workers, w).size());
  }
  return cut(order, sizes);
}

// The indices of each class, shuffled.
Parts indices_by_class(std::span<const int64_t> labels, int64_t num_classes, Rng& rng) {
  Parts by_class(at(num_classes));
  for (size_t i = 0; i < labels.size(); ++i) {
    by_class[at(labels[i])].push_back(static_cast<int64_t>(i));
  }
  for (auto& members : by_class) shuffle(members, rng);
  return by_class;
}

// "label" (McMahan et al. 2017): S = workers * classes_per_worker shards,
// each from a single class, dealt out at random, classes_per_worker to each
// worker. Phases:
//   1. every class present gets one shard, and the rest go one at a time to
//      the class with the largest count / (shards + 1) (D'Hondt), so shard
//      sizes are close across classes;
//   2. each class's shuffled samples are cut into its shards (sizes +-1);
//   3. the shard list is shuffled and worker w takes shards
//      [w * classes_per_worker, (w + 1) * classes_per_worker).
// A worker holding two shards of one class has fewer distinct classes.
Parts partition_label(std::span<const int64_t> labels, int64_t num_classes,
                      const PartitionOptions& options) {
  const int64_t per_worker = options.classes_per_worker;
  if (per_worker < 1 || per_worker > num_classes) {
    throw ConfigError(fmt::format(
        "partition 'label': classes_per_worker must be in [1, num_classes = {}], got {}",
        num_classes, per_worker));
  }
  Rng rng(options.seed);
  const Parts by_class = indices_by_class(labels, num_classes, rng);
  const int64_t num_shards = options.workers * per_worker;
  std::vector<int64_t> shards_of(at(num_classes), 0);
  int64_t present = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    if (!by_class[at(c)].empty()) {
      shards_of[at(c)] = 1;
      ++present;
    }
  }
  if (present > num_shards) {
    throw ConfigError(fmt::format(
        "partition 'label': workers * classes_per_worker = {} shards cannot cover the {} "
        "classes present; raise workers or classes_per_worker",
        num_shards, present));
  }
  for (int64_t given = present; given < num_shards && present > 0; ++given) {
    int64_t best = -1;
    for (int64_t c = 0; c < num_classes; ++c) {
      if (shards_of[at(c)] == 0) continue;
      const auto count = static_cast<int64_t>(by_class[at(c)].size());
      if (best < 0) {
        best = c;
        continue;
      }
      const auto best_count = static_cast<int64_t>(by_class[at(best)].size());
      // count / (shards + 1) > best_count / (best_shards + 1), exactly.
      if (count * (shards_of[at(best)] + 1) > best_count * (shards_of[at(c)] + 1)) best = c;
    }
    ++shards_of[at(best)];
  }
  Parts shards;
  for (int64_t c = 0; c < num_classes; ++c) {
    const auto& members = by_class[at(c)];
    const auto size = static_cast<int64_t>(members.size());
    for (int64_t s = 0; s < shards_of[at(c)]; ++s) {
      const ShardRange r = shard_range(size, shards_of[at(c)], s);
      shards.emplace_back(members.begin() + r.begin, members.begin() + r.end);
    }
  }
  // With no samples at all there are no shards; the workers stay empty.
  shards.resize(at(num_shards));
  std::vector<int64_t> deal(at(num_shards));
  for (int64_t s = 0; s < num_shards; ++s) deal[at(s)] = s;
  shuffle(deal, rng);
  Parts parts(at(options.workers));
  for (int64_t s = 0; s < num_shards; ++s) {
    const auto& shard = shards[at(deal[at(s)])];
    auto& part = parts[at(s / per_worker)];
    part.insert(part.end(), shard.begin(), shard.end());
  }
  return parts;
}

// "dirichlet" (Hsu, Qi & Brown 2019): for each class c, proportions
// p ~ Dirichlet(alpha) over the workers; the class's shuffled samples are cut
// at floor(n_c * (p_0 + ... + p_w)), the last cut at n_c.
Parts partition_dirichlet(std::span<const int64_t> labels, int64_t num_classes,
                          const PartitionOptions& options) {
  if (!(options.alpha > 0.0) || !std::isfinite(options.alpha)) {
    throw ConfigError(
        fmt::format("partition 'dirichlet': alpha must be > 0 and finite, got {}", options.alpha));
  }
  Rng rng(options.seed);
  const Parts by_class = indices_by_class(labels, num_classes, rng);
  Parts parts(at(options.workers));
  for (const auto& members : by_class) {
    const std::vector<double> p = sample_dirichlet(rng, options.workers, options.alpha);
    const auto size = static_cast<int64_t>(members.size());
    double cumulative = 0.0;
    int64_t begin = 0;
    for (int64_t w = 0; w < options.workers; ++w) {
      cumulative += p[at(w)];
      int64_t end = w + 1 == options.workers
                        ? size
                        : static_cast<int64_t>(std::floor(static_cast<double>(size) * cumulative));
      end = std::clamp(end, begin, size);
      parts[at(w)].insert(parts[at(w)].end(), members.begin() + begin, members.begin() + end);
      begin = end;
    }
  }
  return parts;
}

// "quantity": weights x_w = exp(sigma * z_w), z_w ~ N(0, 1). With n >= W
// every worker gets one sample and the other n - W are apportioned by
// largest remainder in proportion to x; with n < W all n are. The shuffled
// indices are then cut into blocks of those sizes, so labels stay IID.
Parts partition_quantity(int64_t n, const PartitionOptions& options) {
  const double sigma = options.quantity_sigma;
  if (!(sigma >= 0.0) || !std::isfinite(sigma)) {
    throw ConfigError(
        fmt::format("partition 'quantity': quantity_sigma must be >= 0 and finite, got {}", sigma));
  }
  Rng rng(options.seed);
  std::vector<double> log_weights(at(options.workers));
  for (auto& lw : log_weights) lw = sigma * static_cast<double>(rng.normal());
  const double top = *std::max_element(log_weights.begin(), log_weights.end());
  std::vector<double> weights;
  for (const double lw : log_weights) weights.push_back(std::exp(lw - top));
  const int64_t floor_each = n >= options.workers ? 1 : 0;
  std::vector<int64_t> sizes = apportion(n - floor_each * options.workers, weights);
  for (auto& s : sizes) s += floor_each;
  std::vector<int64_t> order(at(n));
  for (int64_t i = 0; i < n; ++i) order[at(i)] = i;
  shuffle(order, rng);
  return cut(order, sizes);
}

// "shards" (McMahan et al. 2017, section 3): S = workers * shards_per_worker.
// Phases:
//   1. the indices, stably sorted by label (ties by index);
//   2. cut into S consecutive shards as ShardedSampler cuts an epoch: with
//      n = qS + r, shards 0 .. r-1 hold q + 1 samples and the others q (all
//      S shards are equal when S divides n, as 60,000 / 200 = 300);
//   3. the shard ids shuffled and worker w takes shards
//      [w * shards_per_worker, (w + 1) * shards_per_worker).
// Unlike "label", a shard may straddle two labels, as in the paper; a worker
// holds at most 2 * shards_per_worker labels, and at most shards_per_worker
// when every class size is a multiple of the shard size.
Parts partition_shards(std::span<const int64_t> labels, const PartitionOptions& options) {
  const int64_t per_worker = options.shards_per_worker;
  if (per_worker < 1) {
    throw ConfigError(
        fmt::format("partition 'shards': shards_per_worker must be >= 1, got {}", per_worker));
  }
  const auto n = static_cast<int64_t>(labels.size());
  std::vector<int64_t> order(at(n));
  for (int64_t i = 0; i < n; ++i) order[at(i)] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return labels[at(a)] < labels[at(b)]; });
  const int64_t num_shards = options.workers * per_worker;
  std::vector<int64_t> deal(at(num_shards));
  for (int64_t s = 0; s < num_shards; ++s) deal[at(s)] = s;
  Rng rng(options.seed);
  shuffle(deal, rng);
  Parts parts(at(options.workers));
  for (int64_t s = 0; s < num_shards; ++s) {
    const ShardRange r = shard_range(n, num_shards, deal[at(s)]);
    auto& part = parts[at(s / per_worker)];
    part.insert(part.end(), order.begin() + r.begin, order.begin() + r.end);
  }
  return parts;
}

}  // namespace

double sample_gamma(Rng& rng, double shape) {
  if (!(shape > 0.0) || !std::isfinite(shape)) {
    throw UsageError(fmt::format("sample_gamma: shape must be > 0 and finite, got {}", shape));
  }
  return std::exp(log_gamma_sample(rng, shape));
}

std::vector<double> sample_dirichlet(Rng& rng, int64_t k, double alpha) {
  if (k < 1 || !(alpha > 0.0) || !std::isfinite(alpha)) {
    throw UsageError(fmt::format(
        "sample_dirichlet: need k >= 1 and finite alpha > 0, got k = {}, alpha = {}", k, alpha));
  }
  // Normalising in log space: the largest draw becomes exp(0) = 1.
  std::vector<double> p(at(k));
  for (auto& value : p) value = log_gamma_sample(rng, alpha);
  const double top = *std::max_element(p.begin(), p.end());
  double sum = 0.0;
  for (auto& value : p) {
    value = std::exp(value - top);
    sum += value;
  }
  for (auto& value : p) value /= sum;
  return p;
}

std::vector<std::vector<int64_t>> partition(std::span<const int64_t> labels, int64_t num_classes,
                                            const PartitionOptions& options) {
  const std::string& kind = options.kind;
  if (kind != "iid" && kind != "label" && kind != "dirichlet" && kind != "quantity" &&
      kind != "shards") {
    throw ConfigError(fmt::format("partition: unknown kind '{}' (known: {})", kind, kKnownKinds));
  }
  if (options.workers < 1) {
    throw ConfigError(fmt::format("partition: workers must be >= 1, got {}", options.workers));
  }
  if (num_classes < 1) {
    throw UsageError(fmt::format("partition: num_classes must be >= 1, got {}", num_classes));
  }
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      throw UsageError(fmt::format("partition: label {} of sample {} is outside [0, {})", labels[i],
                                   i, num_classes));
    }
  }
  const auto n = static_cast<int64_t>(labels.size());
  Parts parts;
  if (kind == "iid") {
    parts = partition_iid(n, options);
  } else if (kind == "label") {
    parts = partition_label(labels, num_classes, options);
  } else if (kind == "dirichlet") {
    parts = partition_dirichlet(labels, num_classes, options);
  } else if (kind == "quantity") {
    parts = partition_quantity(n, options);
  } else {
    parts = partition_shards(labels, options);
  }
  for (auto& part : parts) std::sort(part.begin(), part.end());
  return parts;
}

std::vector<std::vector<int64_t>> label_histogram(std::span<const std::vector<int64_t>> parts,
                                                  std::span<const int64_t> labels,
                                                  int64_t num_classes) {
  if (num_classes < 1) {
    throw UsageError(fmt::format("label_histogram: num_classes must be >= 1, got {}", num_classes));
  }
  const auto n = static_cast<int64_t>(labels.size());
  std::vector<std::vector<int64_t>> histogram(parts.size(),
                                              std::vector<int64_t>(at(num_classes), 0));
  for (size_t w = 0; w < parts.size(); ++w) {
    for (const int64_t i : parts[w]) {
      if (i < 0 || i >= n) {
        throw UsageError(
            fmt::format("label_histogram: worker {} holds index {}, outside [0, {})", w, i, n));
      }
      const int64_t label = labels[at(i)];
      if (label < 0 || label >= num_classes) {
        throw UsageError(fmt::format("label_histogram: label {} of sample {} is outside [0, {})",
                                     label, i, num_classes));
      }
      ++histogram[w][at(label)];
    }
  }
  return histogram;
}

std::string format_histogram(const std::vector<std::vector<int64_t>>& histogram) {
  const size_t classes = histogram.empty() ? 0 : histogram.front().size();
  for (size_t w = 0; w < histogram.size(); ++w) {
    if (histogram[w].size() != classes) {
      throw UsageError(fmt::format("format_histogram: row {} has {} classes, row 0 has {}", w,
                                   histogram[w].size(), classes));
    }
  }
  // Cells: header row, one row per worker, total row; columns: worker,
  // classes, total.
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header{"worker"};
  for (size_t c = 0; c < classes; ++c) header.push_back(fmt::format("c{}", c));
  header.emplace_back("total");
  cells.push_back(std::move(header));
  std::vector<int64_t> column_totals(classes, 0);
  int64_t grand_total = 0;
  for (size_t w = 0; w < histogram.size(); ++w) {
    std::vector<std::string> row{fmt::format("{}", w)};
    int64_t row_total = 0;
    for (size_t c = 0; c < classes; ++c) {
      row.push_back(fmt::format("{}", histogram[w][c]));
      row_total += histogram[w][c];
      column_totals[c] += histogram[w][c];
    }
    row.push_back(fmt::format("{}", row_total));
    grand_total += row_total;
    cells.push_back(std::move(row));
  }
  std::vector<std::string> totals{"total"};
  for (const int64_t t : column_totals) totals.push_back(fmt::format("{}", t));
  totals.push_back(fmt::format("{}", grand_total));
  cells.push_back(std::move(totals));

  std::vector<size_t> widths(classes + 2, 0);
  for (const auto& row : cells) {
    for (size_t k = 0; k < row.size(); ++k) widths[k] = std::max(widths[k], row[k].size());
  }
  std::string out;
  for (const auto& row : cells) {
    for (size_t k = 0; k < row.size(); ++k) {
      if (k > 0) out += "  ";
      out += fmt::format("{:>{}}", row[k], widths[k]);
    }
    out += '\n';
  }
  return out;
}

}  // namespace dtrain::data
