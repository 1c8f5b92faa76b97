"""PyTorch CPU timings of the pooling operators of `cargo bench -p fgia-bench --bench pooling`,
same shapes and the same operator definitions (see crates/fgia-encoding/src/pooling/*.rs).

Run:  sh python/setup.sh && .venv-bench/bin/python python/pooling_torch.py
Prints the median of 10 runs (after 2 warm-up runs) per operator, forward and forward+backward.
"""
import statistics
import time

import torch

torch.manual_seed(0)


def cov(x):
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    f = f - f.mean(2, keepdim=True)
    return f @ f.transpose(1, 2) / (h * w)


def triu(a):
    c = a.shape[1]
    i = torch.triu_indices(c, c)
    return a[:, i[0], i[1]]


def bcnn(x):
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    g = (f @ f.transpose(1, 2) / (h * w)).reshape(b, c * c)
    g = torch.sign(g) * torch.sqrt(g.abs() + 1e-10)
    return torch.nn.functional.normalize(g, dim=1)


class RM:
    def __init__(self, c, d=8192):
        self.w1 = (torch.randint(0, 2, (d, c)) * 2 - 1).float()
        self.w2 = (torch.randint(0, 2, (d, c)) * 2 - 1).float()
        self.d = d

    def __call__(self, x):
        b, c, h, w = x.shape
        cols = x.reshape(b, c, h * w).transpose(0, 1).reshape(c, -1)
        return ((self.w1 @ cols) * (self.w2 @ cols)).reshape(self.d, b, h * w).sum(2).T / self.d ** 0.5


def isqrt(x, n=5):
    s = cov(x)
    b, c, _ = s.shape
    i3 = 3.0 * torch.eye(c).expand(b, c, c)
    tr = s.diagonal(dim1=1, dim2=2).sum(1).view(b, 1, 1)
    a = s / tr
    zy = 0.5 * (i3 - a)
    y = a @ zy
    z = zy
    for _ in range(1, n - 1):
        zy = 0.5 * (i3 - z @ y)
        y = y @ zy
        z = zy @ z
    y = 0.5 * y @ (i3 - z @ y)
    return triu(y * torch.sqrt(tr))


def mpn(x):
    lam, u = torch.linalg.eigh(cov(x))
    return triu(u @ torch.diag_embed(lam.clamp(min=1e-10).sqrt()) @ u.transpose(1, 2))


def timed(fn, reps=10, warm=2):
    ts = []
    for i in range(warm + reps):
        t = time.perf_counter()
        fn()
        if i >= warm:
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    settings = [
        ("vgg16-448", (32, 512, 28, 28), None, ["bcnn", "compact-bilinear-rm"]),
        ("resnet50-448", (32, 2048, 14, 14), 256, ["isqrt-cov", "mpn-cov"]),
        ("small", (8, 64, 7, 7), None, ["bcnn", "compact-bilinear-rm", "isqrt-cov", "mpn-cov"]),
    ]
    for name, shape, reduce_to, ops in settings:
        x = torch.randn(shape).abs()
        red = None
        if reduce_to:
            red = torch.nn.Sequential(torch.nn.Conv2d(shape[1], reduce_to, 1, bias=False), torch.nn.BatchNorm2d(reduce_to), torch.nn.ReLU())
        ch = reduce_to or shape[1]
        rm = RM(ch)
        fns = {"bcnn": bcnn, "compact-bilinear-rm": rm, "isqrt-cov": isqrt, "mpn-cov": mpn}
        for op in ops:
            f = fns[op]

            def fwd():
                with torch.no_grad():
                    h = red(x) if red else x
                    f(h)

            def fb():
                xg = x.clone().requires_grad_(True)
                h = red(xg) if red else xg
                f(h).sum().backward()

            print(f"pooling/{name}/{op}/forward: {1e3 * timed(fwd):.2f} ms")
            print(f"pooling/{name}/{op}/forward-backward: {1e3 * timed(fb):.2f} ms")


if __name__ == "__main__":
    main()
