"""PyTorch CPU reference for `cargo bench -p fgia-bench --bench train_step`.

Times one training step (forward, cross-entropy, backward, SGD with momentum and weight decay,
ten times the learning rate on the head) at batch 16, 224 x 224, 200 classes, for
EfficientNet-Lite0 (the same layout as fgia's) and torchvision-layout ResNet-50, with every
thread of the machine. Prints the median of 10 timed steps after 2 warm-up steps.

Also times inference (evaluation mode, no gradient) at batch 1 and 32. An argument keeps the
networks whose name contains it (`efficientnet`, `resnet50`).

Run:  sh python/setup.sh && .venv-bench/bin/python python/train_step.py [NAME [--train-only]]
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fgia-nn" / "tests" / "fixtures"))
# The reference implementations used for fgia-nn's weight fixtures (same layouts and names).
src = (Path(__file__).resolve().parents[2] / "fgia-nn" / "tests" / "fixtures" / "make_fixtures.py").read_text()
ns = {}
exec(src.split("def randomise_bn")[0], ns)


def lite0():
    m = ns["EffLite0"](1)
    m._fc = nn.Linear(1280, 200)
    return m


def resnet50():
    m = ns["ResNet"](ns["Bottleneck"], [3, 4, 6, 3], 64)
    m.fc = nn.Linear(2048, 200)
    return m


def bench(name, model, head):
    torch.manual_seed(0)
    model.train()
    params_head = list(head.parameters())
    ids = {id(p) for p in params_head}
    body = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD([{"params": body, "lr": 0.01}, {"params": params_head, "lr": 0.1}], momentum=0.9, weight_decay=1e-4)
    x = torch.randn(16, 3, 224, 224)
    y = torch.arange(16)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(12):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t
        if i >= 2:
            times.append(dt)
    med = statistics.median(times)
    print(f"train_step/{name}/b16_224: median {med:.3f} s/step, {16 / med:.1f} images/s (torch {torch.__version__}, {torch.get_num_threads()} threads)")


def infer(name, model):
    model.eval()
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224)
        times = []
        with torch.no_grad():
            for i in range(12):
                t = time.perf_counter()
                model(x)
                if i >= 2:
                    times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"infer/{name}/b{batch}_224: median {1e3 * med:.1f} ms, {batch / med:.1f} images/s")


if __name__ == "__main__":
    keep = sys.argv[1] if len(sys.argv) > 1 else ""
    train_only = "--train-only" in sys.argv  # for the peak resident set of training alone
    if keep in "efficientnet-lite0":
        m = lite0()
        bench("efficientnet-lite0", m, m._fc)
        if not train_only:
            infer("efficientnet-lite0", m)
    if keep in "resnet50":
        m = resnet50()
        bench("resnet50", m, m.fc)
        if not train_only:
            infer("resnet50", m)
