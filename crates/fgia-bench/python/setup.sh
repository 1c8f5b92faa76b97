#!/bin/sh
# Creates .venv-bench with NumPy and the CPU build of PyTorch for the reference timings.
# PyTorch's CPU-only wheels come from its own index; where that index is unreachable, the
# default index's build (which also runs on the CPU) is installed instead.
set -e
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
.venv-bench/bin/pip install -q numpy faiss-cpu
.venv-bench/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu || .venv-bench/bin/pip install -q torch
