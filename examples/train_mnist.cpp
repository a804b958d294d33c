// Trains an MLP on MNIST with the dtrain C++ API: define the model, the loss
// and the optimizer, then the usual loop.
// Usage: train_mnist [MNIST_DIR] [EPOCHS]   (MNIST_DIR default: data/mnist)
#include <cstdio>
#include <cstdlib>
#include <string>

#include "autograd/functions.h"
#include "core/error.h"
#include "data/idx.h"
#include "data/loader.h"
#include "data/sampler.h"
#include "nn/layers.h"
#include "nn/optimizer.h"
#include "optim/lr_schedule.h"
#include "optim/sgd.h"
#include "strategy/strategy.h"

using namespace dtrain;

int main(int argc, char** argv) try {
  const std::string dir = argc > 1 ? argv[1] : "data/mnist";
  const int epochs = argc > 2 ? std::atoi(argv[2]) : 3;

  // Data: normalised MNIST, shuffled batches of 128 prepared in the background.
  data::IdxOptions idx;
  idx.normalize = true;
  const data::TensorDataset train = data::load_mnist(dir, data::MnistSplit::kTrain, idx);
  const data::TensorDataset test = data::load_mnist(dir, data::MnistSplit::kTest, idx);
  data::DataLoader loader(train, {.batch_size = 128, .drop_last = false, .prefetch = 2});

  // Model: 784-256-256-10, initialised like PyTorch from a seed.
  Rng rng(1);
  nn::Sequential model;
  model.add("flatten", std::make_unique<nn::Flatten>());
  model.add("fc1", std::make_unique<nn::Linear>(784, 256, rng));
  model.add("relu1", std::make_unique<nn::ReLU>());
  model.add("fc2", std::make_unique<nn::Linear>(256, 256, rng));
  model.add("relu2", std::make_unique<nn::ReLU>());
  model.add("fc3", std::make_unique<nn::Linear>(256, 10, rng));

  // Optimizer and a cosine learning-rate schedule.
  auto optimizer = nn::Optimizer::make<optim::Sgd>(
      model.parameters(), optim::SgdOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true});
  const int64_t steps = epochs * data::DataLoader::batch_count(train.size(), 128, false);
  optim::CosineAnnealingLr schedule(0.1f, steps, 0.0f);

  int64_t step = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    model.train();
    loader.start_epoch(data::shuffled_order(train.size(), /*seed=*/1, epoch));
    double loss_sum = 0.0;
    int64_t seen = 0;
    while (auto batch = loader.next()) {
      optimizer->set_lr(schedule.lr_at(step++));
      Variable logits = model.forward(Variable(batch->x));
      Variable loss = cross_entropy(logits, batch->y);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      loss_sum += loss.item() * double(batch->size());
      seen += batch->size();
    }

    // Evaluation: no graph, eval mode.
    model.eval();
    NoGradGuard no_grad;
    Variable logits = model.forward(Variable(test.features()));
    const int64_t correct = strategy::count_correct(logits.data(), test.labels());
    std::printf("epoch %d: train loss %.4f, test accuracy %.2f%%\n", epoch + 1,
                loss_sum / double(seen), 100.0 * double(correct) / double(test.size()));
  }
  return 0;
} catch (const dtrain::Error& e) {
  std::fprintf(stderr, "train_mnist: %s\n", e.what());
  return 1;
}
