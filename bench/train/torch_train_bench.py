#!/usr/bin/python3
"""PyTorch side of the training-throughput benchmark.

Trains the MNIST MLP (784-256-256-10) or LeNet-5 with SGD (momentum 0.9) on
8 batches of 128 real MNIST images (the first 1024 of the training set,
normalised as dtrain does; compute only, no data loading), the same work as
bench/train/train_step_bench.cpp on the same batches, and prints one JSON
line per repetition: {"model": ..., "samples_per_s": ...}. The data comes
from $DATA (default data/mnist, run from the repository root).
Usage: torch_train_bench.py MODEL STEPS REPS THREADS [BATCH]
"""
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn


def mnist_batches(batch, count=8):
    """The first count * batch training images and labels as `count` batches,
    scaled and normalised as dtrain's MNIST loader does ((x/255 - 0.1307) / 0.3081)."""
    data = os.environ.get("DATA", "data/mnist")
    n = batch * count
    with open(os.path.join(data, "train-images-idx3-ubyte"), "rb") as f:
        images = np.frombuffer(f.read(16 + n * 784), dtype=np.uint8, offset=16)
    with open(os.path.join(data, "train-labels-idx1-ubyte"), "rb") as f:
        labels = np.frombuffer(f.read(8 + n), dtype=np.uint8, offset=8)
    x = (torch.from_numpy(images.astype(np.float32)).reshape(n, 1, 28, 28) / 255.0 - 0.1307) / 0.3081
    y = torch.from_numpy(labels.astype(np.int64))
    return ([x[i * batch:(i + 1) * batch].contiguous() for i in range(count)],
            [y[i * batch:(i + 1) * batch].contiguous() for i in range(count)])


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def lenet5():
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def main():
    model_name, steps, reps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = {"mlp": mlp, "lenet5": lenet5}[model_name]()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 128
    xs, ys = mnist_batches(batch)

    def step(i):
        opt.zero_grad()
        loss = loss_fn(model(xs[i % 8]), ys[i % 8])
        loss.backward()
        opt.step()

    for i in range(20):
        step(i)
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        dt = time.perf_counter() - t0
        print(json.dumps({"model": model_name, "samples_per_s": steps * batch / dt}), flush=True)


if __name__ == "__main__":
    main()
