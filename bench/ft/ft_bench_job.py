"""What the fault-tolerance benchmarks share: their synthetic job (6000
samples of 64 features, 10 classes, a 64-256-10 MLP, sgd, batches of 60, a
progress line every step) and the launcher's worker processes."""


def job_toml(name, epochs, momentum=None):
    """The job file's text; `momentum` None leaves sgd without momentum."""
    momentum_line = f"momentum = {momentum}\n" if momentum is not None else ""
    return f"""
[job]
name = "{name}"
seed = 5
[data]
dataset = "synthetic"
synthetic_samples = 6000
synthetic_features = 64
synthetic_classes = 10
[model]
input_shape = [64]
[[model.layers]]
type = "linear"
out_features = 256
[[model.layers]]
type = "relu"
[[model.layers]]
type = "linear"
out_features = 10
[optimizer]
type = "sgd"
lr = 0.05
{momentum_line}[train]
epochs = {epochs}
batch_size = 60
log_every_steps = 1
"""


def children(pid):
    """The launcher's child processes, ascending pid (slot order)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())
