"""PyTorch CPU timings of the pooling operators of `cargo bench -p fgia-bench --bench pooling`,
same shapes and the same operator definitions (see crates/fgia-encoding/src/pooling/*.rs).

Run:  sh python/setup.sh && .venv-bench/bin/python python/pooling_torch.py [REGEX]
Prints the median of 10 runs (after 2 warm-up runs) per operator, forward and forward+backward;
REGEX (as criterion's filter) keeps the `<shape>/<operator>` names it matches.
"""
import re
import statistics
import sys
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


class TS:
    """Tensor Sketch through torch.fft (the paper's route), summed over locations."""

    def __init__(self, c, d=8192):
        self.h = [torch.randint(0, d, (c,)) for _ in range(2)]
        self.s = [(torch.randint(0, 2, (c,)) * 2 - 1).float() for _ in range(2)]
        self.d = d

    def __call__(self, x):
        b, c, h, w = x.shape
        rows = x.reshape(b, c, h * w).transpose(1, 2).reshape(-1, c)
        spec = None
        for hh, ss in zip(self.h, self.s):
            cs = torch.zeros(rows.shape[0], self.d).index_add(1, hh, rows * ss)
            f = torch.fft.rfft(cs, dim=1)
            spec = f if spec is None else spec * f
        return torch.fft.irfft(spec, n=self.d, dim=1).reshape(b, h * w, self.d).sum(1)


class KP:
    """Kernel pooling, order 4, d = 4096 per sketched order, learnable alpha."""

    def __init__(self, c, d=4096, order=4):
        self.ts2 = TS(c, d)
        self.higher = [[(torch.randint(0, d, (c,)), (torch.randint(0, 2, (c,)) * 2 - 1).float()) for _ in range(k)] for k in range(3, order + 1)]
        self.log_alpha = torch.zeros(order + 1, requires_grad=True)
        self.d = d

    def __call__(self, x):
        b, c, h, w = x.shape
        m = h * w
        a = (0.5 * self.log_alpha).exp()
        parts = [a[0] * torch.ones(b, 1), a[1] * x.reshape(b, c, m).mean(2), a[2] * self.ts2(x) / m]
        rows = x.reshape(b, c, m).transpose(1, 2).reshape(-1, c)
        for i, funcs in enumerate(self.higher):
            spec = None
            for hh, ss in funcs:
                f = torch.fft.rfft(torch.zeros(rows.shape[0], self.d).index_add(1, hh, rows * ss), dim=1)
                spec = f if spec is None else spec * f
            parts.append(a[3 + i] * torch.fft.irfft(spec, n=self.d, dim=1).reshape(b, m, self.d).mean(1))
        return torch.cat(parts, 1)


class HBP:
    def __init__(self, c, d=2048):
        self.proj = [torch.nn.Conv2d(c, d, 1) for _ in range(3)]

    def __call__(self, x):
        z = [p(x) for p in self.proj]
        out = []
        for i in range(3):
            for j in range(i + 1, 3):
                v = (z[i] * z[j]).sum((2, 3))
                out.append(torch.nn.functional.normalize(torch.sign(v) * torch.sqrt(v.abs() + 1e-10), dim=1))
        return torch.cat(out, 1)


class LRBP:
    def __init__(self, c, reduced=100, classes=200, rank=8):
        self.red = torch.nn.Sequential(torch.nn.Conv2d(c, reduced, 1, bias=False), torch.nn.BatchNorm2d(reduced), torch.nn.ReLU())
        self.u = torch.nn.Parameter(0.01 * torch.randn(classes * rank, reduced))
        self.v = torch.nn.Parameter(0.01 * torch.randn(classes * rank, reduced))
        self.k, self.r = classes, rank

    def __call__(self, x):
        f = self.red(x)
        b, c, h, w = f.shape
        f = f.reshape(b, c, h * w)
        eu = ((self.u @ f) ** 2).reshape(b, self.k, self.r, h * w).sum((2, 3))
        ev = ((self.v @ f) ** 2).reshape(b, self.k, self.r, h * w).sum((2, 3))
        return (eu - ev) / (h * w)


class Grouped:
    def __init__(self, c, groups=16, group_channels=32):
        self.conv = torch.nn.Conv2d(c, groups * group_channels, 1)
        self.g, self.cg = groups, group_channels

    def __call__(self, x):
        z = self.conv(x)
        b, _, h, w = z.shape
        f = z.reshape(b * self.g, self.cg, h * w)
        o = (f @ f.transpose(1, 2) / (h * w)).reshape(b, self.g, -1).sum(1)
        return torch.nn.functional.normalize(torch.sign(o) * torch.sqrt(o.abs() + 1e-10), dim=1)


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
    allops = ["bcnn", "compact-bilinear-ts", "compact-bilinear-rm", "hbp", "kernel-pooling", "lrbp", "isqrt-cov", "mpn-cov", "grouped-bilinear"]
    settings = [
        ("vgg16-448", (32, 512, 28, 28), ["bcnn", "compact-bilinear-ts", "compact-bilinear-rm", "hbp"]),
        ("vgg16-224", (32, 512, 14, 14), ["kernel-pooling", "lrbp"]),
        ("resnet50-448", (32, 2048, 14, 14), ["isqrt-cov", "mpn-cov", "grouped-bilinear"]),
        ("small", (8, 64, 7, 7), allops),
    ]
    for name, shape, ops in settings:
        x = torch.randn(shape).abs()
        c = shape[1]
        red = torch.nn.Sequential(torch.nn.Conv2d(c, min(256, c), 1, bias=False), torch.nn.BatchNorm2d(min(256, c)), torch.nn.ReLU())
        fns = {
            "bcnn": bcnn,
            "compact-bilinear-ts": TS(c),
            "compact-bilinear-rm": RM(c),
            "hbp": HBP(c),
            "kernel-pooling": KP(c),
            "lrbp": LRBP(c),
            "isqrt-cov": lambda h: isqrt(red(h)),
            "mpn-cov": lambda h: mpn(red(h)),
            "grouped-bilinear": Grouped(c),
        }
        for op in ops:
            if len(sys.argv) > 1 and not re.search(sys.argv[1], f"{name}/{op}/"):
                continue
            f = fns[op]

            def fwd():
                with torch.no_grad():
                    f(x)

            def fb():
                xg = x.clone().requires_grad_(True)
                f(xg).sum().backward()

            print(f"pooling/{name}/{op}/forward: {1e3 * timed(fwd):.2f} ms", flush=True)
            print(f"pooling/{name}/{op}/forward-backward: {1e3 * timed(fb):.2f} ms", flush=True)


if __name__ == "__main__":
    main()
