// TestJob: the text of a small job file for tests that run a whole job (the
// dtrain executable, a restart, an elastic group): a synthetic dataset, a
// small MLP, an optimizer and a [train] table, plus any other key. It keeps
// that job in one place instead of a TOML literal pasted into every test
// file; a job that is deliberately unusual (a malformed file, a parser
// fixture, an MNIST example) stays pasted where it is tested.
//
//   const std::string job = dtrain::testing::TestJob()
//                               .name("restart")
//                               .seed(3)
//                               .synthetic(1200, 10, 3)
//                               .mlp({32})
//                               .optimizer("adam", 0.01)
//                               .epochs(3)
//                               .batch(50)
//                               .set("train.checkpoint_every_steps", "1")
//                               .toml();
//
// renders, line for line as a hand-written job would be (so line numbers in
// the parser's messages are predictable):
//
//   (an empty first line)
//   [job]
//   name = "restart"
//   seed = 3
//
//   [data]
//   dataset = "synthetic"
//   synthetic_samples = 1200
//   ...
//   [[model.layers]]          fc1: linear 32, then relu, then fc2: linear 3
//   ...
//   [train]
//   epochs = 3
//   batch_size = 50
//   checkpoint_every_steps = 1
//
// Every table is preceded by an empty line. Tables come in the order job,
// data, model (its keys, then its layers), optimizer, schedule, train,
// distributed, then any other in the order first set; keys within a table in
// the order first set. Setting a key again replaces its value in place. Only
// what was set is written: the job file's defaults apply to the rest.
//
// set() writes its value verbatim as TOML, so a string needs its quotes:
// set("schedule.type", "\"cosine\""); the named setters quote and format
// their values themselves.
//
// Thread safety: a value; one thread per object. Throws
// dtrain::InternalError, a bug of the test: set() of a key without a table,
// toml() after mlp() without synthetic() (the output layer's width is the
// number of classes). Never blocks.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dtrain::testing {

class TestJob {
 public:
  // job.name (quoted) and job.seed.
  TestJob& name(const std::string& name);
  TestJob& seed(int64_t seed);
  // data.dataset = "synthetic" with `samples` samples of `features` floats
  // in `classes` classes; model.input_shape = [features].
  TestJob& synthetic(int64_t samples, int64_t features, int64_t classes);
  // Linear layers fc1..fcN of the `hidden` widths, each followed by a relu,
  // then fc<N+1> with one output per class.
  TestJob& mlp(std::vector<int64_t> hidden);
  // optimizer.type (quoted) and optimizer.lr.
  TestJob& optimizer(const std::string& type, double lr);
  // train.epochs and train.batch_size.
  TestJob& epochs(int64_t epochs);
  TestJob& batch(int64_t batch_size);
  // `key` is "<table>.<name>" ("train.max_steps", "distributed.ps.servers":
  // table "distributed.ps"); `toml_value` is written as it is.
  TestJob& set(const std::string& key, const std::string& toml_value);

  // The job file's text.
  std::string toml() const;

 private:
  struct Table {
    std::string name;
    std::vector<std::pair<std::string, std::string>> keys;
  };

  std::vector<Table> tables_;
  std::vector<int64_t> hidden_;
  bool has_mlp_ = false;
  int64_t classes_ = 0;
};

}  // namespace dtrain::testing
