#!/usr/bin/env python3
"""The peer of `dtrain fl`: FedAvg on MNIST in plain PyTorch, clients one
after another in one process (what a Flower simulation does per actor, without
Ray), and a centralized loop over the same samples for comparison.

Prints one JSON object a line: {"event": "round", "round", "test_accuracy",
"seconds"} per round, then {"event": "centralized", "samples", "seconds"}
(the same number of samples as one round, batch B, one process), then
{"event": "end", ...}.

Same model, split kind, K, C, E, B and lr as the dtrain job it is compared
with; the split itself is drawn by numpy, so its samples differ from dtrain's.
Run with Debian's interpreter: /usr/bin/python3 bench/fl/torch_fedavg.py ...
"""
import argparse
import json
import struct
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(mnist):
    def images(name):
        x = read_idx(f"{mnist}/{name}").astype(np.float32) / 255.0
        return torch.from_numpy((x - 0.1307) / 0.3081).unsqueeze(1)

    def labels(name):
        return torch.from_numpy(read_idx(f"{mnist}/{name}").astype(np.int64))

    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


def model_of(kind):
    if kind == "2nn":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200),
                             nn.ReLU(), nn.Linear(200, 10))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Linear(512, 10))


def split(labels, clients, kind, rng):
    n = len(labels)
    if kind == "iid":
        return np.array_split(rng.permutation(n), clients)
    order = np.argsort(labels.numpy(), kind="stable")
    shards = np.array_split(order, clients * 2)
    pick = rng.permutation(len(shards))
    return [np.concatenate([shards[pick[2 * k]], shards[pick[2 * k + 1]]]) for k in range(clients)]


def local_train(model, x, y, epochs, batch, lr, rng):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    b = len(x) if batch == 0 else batch
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(x)))
        for s in range(0, len(x), b):
            idx = order[s:s + b]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def evaluate(model, x, y):
    with torch.no_grad():
        correct = sum(int((model(x[s:s + 1000]).argmax(1) == y[s:s + 1000]).sum())
                      for s in range(0, len(x), 1000))
    return correct / len(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mnist", default="data/mnist")
    p.add_argument("--model", choices=["2nn", "cnn"], default="2nn")
    p.add_argument("--split", choices=["iid", "shards"], default="iid")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    xtr, ytr, xte, yte = load(a.mnist)
    parts = split(ytr, a.clients, a.split, rng)
    global_model = model_of(a.model)
    local = model_of(a.model)
    m = max(1, round(a.fraction * a.clients))
    for r in range(1, a.rounds + 1):
        start = time.perf_counter()
        chosen = sorted(rng.choice(a.clients, m, replace=False))
        total = sum(len(parts[k]) for k in chosen)
        avg = [torch.zeros_like(t) for t in global_model.state_dict().values()]
        for k in chosen:
            local.load_state_dict(global_model.state_dict())
            idx = torch.from_numpy(parts[k])
            local_train(local, xtr[idx], ytr[idx], a.epochs, a.batch, a.lr, rng)
            w = len(parts[k]) / total
            for acc, t in zip(avg, local.state_dict().values()):
                acc.add_(t, alpha=w)
        global_model.load_state_dict(dict(zip(global_model.state_dict().keys(), avg)))
        seconds = time.perf_counter() - start
        print(json.dumps({"event": "round", "round": r, "seconds": seconds,
                          "test_accuracy": evaluate(global_model, xte, yte)}), flush=True)
    # One process over the same samples as one round, batch B.
    samples = m * (len(ytr) // a.clients) * a.epochs
    start = time.perf_counter()
    idx = torch.from_numpy(np.resize(rng.permutation(len(ytr)), samples))  # cyclic if samples > n
    local_train(local, xtr[idx], ytr[idx], 1, a.batch, a.lr, rng)
    print(json.dumps({"event": "centralized", "samples": samples,
                      "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
