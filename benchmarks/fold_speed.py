"""Inference speed-up from folding batch norm into the preceding convolutions of a small CNN.

Times the eager model (Conv -> BN -> ReLU blocks) against the folded one (Conv -> ReLU) in one
process, alternating the models so that all see the same machine load, and prints the median
time per batch and the ratios for a few batch sizes. The eager model is timed twice: with
bnlib's BatchNorm2d (written from tensor operations, as the book's models use it) and with
torch.nn.BatchNorm2d (one fused kernel: the fair baseline). Outputs are checked equal first.

Run: ``python benchmarks/fold_speed.py`` (about 20 s on an idle core; one thread, CPU).
"""

from __future__ import annotations

import time

import numpy as np
import torch

import bnlib.torch as bt
from bnlib.experiments.models import small_cnn
from bnlib.timing import time_alternating
from bnlib.torch import fold_all_bn


def with_torch_bn(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """A copy of ``model`` with every bnlib BatchNorm2d replaced by torch.nn.BatchNorm2d."""
    layers = []
    for m in model:
        if isinstance(m, bt.BatchNorm2d):
            ref = torch.nn.BatchNorm2d(m.num_features)
            ref.load_state_dict(m.state_dict())
            m = ref
        layers.append(m)
    return torch.nn.Sequential(*layers).eval()


def compare(batch_size: int, rounds: int = 7, channels: int = 16) -> dict[str, float]:
    """Median seconds per batch of each model, measured alternately."""
    torch.manual_seed(0)
    eager = small_cnn(norm="batch", channels=channels)
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in eager.modules():
            if isinstance(m, bt.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    models = {
        "bnlib BN": eager.eval(),
        "torch BN": with_torch_bn(eager),
        "folded": fold_all_bn(eager),
    }
    x = torch.rand(batch_size, 1, 8, 8)
    with torch.inference_mode():
        for model in models.values():
            torch.testing.assert_close(model(x), eager(x), rtol=1e-4, atol=1e-5)
    inner = max(1, 512 // len(x))  # enough passes per timed call to rise above timer noise

    def passes(model):
        for _ in range(inner):
            model(x)

    with torch.inference_mode():  # alternate, so drifts in machine load hit all alike
        times = time_alternating(
            {name: (lambda m=m: passes(m)) for name, m in models.items()},
            repeats=3 * rounds,
            clock=time.perf_counter,
        )
    return {name: float(np.median(t)) / inner for name, t in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, small_cnn(channels=16) on 8x8 digits-sized input")
    print("median ms per batch; speed-up = eager time / folded time")
    print(
        f"{'batch':>6} {'bnlib BN':>9} {'torch BN':>9} {'folded':>8} "
        f"{'vs bnlib':>9} {'vs torch':>9}"
    )
    for batch_size in (1, 32, 256):
        t = compare(batch_size)
        print(
            f"{batch_size:>6} {t['bnlib BN'] * 1e3:>9.3f} {t['torch BN'] * 1e3:>9.3f} "
            f"{t['folded'] * 1e3:>8.3f} {t['bnlib BN'] / t['folded']:>8.2f}x "
            f"{t['torch BN'] / t['folded']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
