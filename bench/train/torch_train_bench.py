#!/usr/bin/python3
"""PyTorch side of the training-throughput benchmark.

Trains the MNIST MLP (784-256-256-10) or LeNet-5 with SGD (momentum 0.9) on
pre-generated random batches of 128 (compute only, no data loading), the same
work as bench/train/train_step_bench.cpp, and prints one JSON line per
repetition: {"model": ..., "samples_per_s": ...}.
Usage: torch_train_bench.py MODEL STEPS REPS THREADS [BATCH]
"""
import json
import sys
import time

import torch
import torch.nn as nn


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
    xs = [torch.randn(batch, 1, 28, 28) for _ in range(8)]
    ys = [torch.randint(0, 10, (batch,)) for _ in range(8)]

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
