"""Normalizations as the batch shrinks (Wu & He 2018, Figure 1), under the protocol.

Batch normalization (BN) estimates its mean and variance from the samples of one mini-batch,
so with 2 or 4 samples per batch those estimates are noisy in training and the running
averages used at test time are poor. :func:`batch_size_sweep` trains the same MLP with each
normalization at each batch size for the same number of samples (``epochs`` passes over
the training part, as Wu & He did), each arm with its own learning rate chosen on
validation at each batch size (:func:`bnlib.experiments.lr_search.run_widening`), and
reports the test error of the runs at the chosen rate. The arms:

- ``"batch"``: BN (:class:`bnlib.torch.BatchNorm1d`);
- ``"renorm"``: Batch Renormalization (:class:`bnlib.torch.BatchRenorm1d`), plain BN for
  the first tenth of the run, then ``r_max`` and ``d_max`` relaxed to 3 and 5
  (:class:`~bnlib.experiments.renorm_schedule.RenormSchedule`);
- ``"group"``: group norm (:class:`bnlib.torch.GroupNorm`, groups of 25 of the 100 units);
- ``"group_ws"``: group norm with weight standardization
  (:mod:`bnlib.experiments.weight_std`, Qiao et al. 2019);
- ``"layer"``: layer norm (:class:`bnlib.torch.LayerNorm`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from .data import Split
from .lr_search import CachedArm, run_widening
from .models import mlp
from .precision import cast_like
from .protocol import Interval, Results, run
from .renorm_schedule import RenormSchedule, with_batch_renorm
from .weight_std import with_weight_standardization

__all__ = ["SWEEP_NORMS", "scaled_lr", "steps_for_epochs", "sweep_model", "BatchSizeSweep",
           "batch_size_sweep"]

#: The arms of the sweep, in the order the book shows them.
SWEEP_NORMS: tuple[str, ...] = ("batch", "renorm", "group", "group_ws", "layer")


def scaled_lr(batch_size: int, base_lr: float = 0.1, base_batch_size: int = 32) -> float:
    r"""The linear scaling rule: :math:`\eta = \eta_0 \, B / B_0` (Goyal et al. 2017).

    The sweep uses it only to centre the first slice of the learning-rate search.

    Args:
        batch_size: :math:`B`.
        base_lr: :math:`\eta_0`, the rate at the base batch size. Default: ``0.1``.
        base_batch_size: :math:`B_0`. Default: ``32``.

    Example:
        >>> scaled_lr(2)
        0.00625
    """
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"expected batch sizes >= 1 (got {batch_size} and {base_batch_size})")
    return base_lr * batch_size / base_batch_size


def steps_for_epochs(num_samples: int, batch_size: int, epochs: float) -> int:
    """SGD steps that show ``epochs`` passes over ``num_samples`` samples (at least one step).

    Example:
        >>> steps_for_epochs(1006, 32, 2)
        62
    """
    if epochs <= 0:
        raise ValueError(f"expected epochs > 0 (got {epochs})")
    return max(1, int(epochs * (num_samples // batch_size)))


def sweep_model(norm: str, **mlp_kwargs) -> nn.Sequential:
    """The MLP of one arm (see the module docstring), initialized for its activation.

    Example:
        >>> [type(m).__name__ for m in sweep_model("group_ws", depth=1)]
        ['WSLinear', 'GroupNorm', 'Sigmoid', 'Linear']
    """
    if norm not in SWEEP_NORMS:
        raise ValueError(f"expected norm in {list(SWEEP_NORMS)} (got {norm!r})")
    if norm == "renorm":
        return with_batch_renorm(mlp(norm="batch", **mlp_kwargs))
    if norm == "group_ws":
        return with_weight_standardization(mlp(norm="group", **mlp_kwargs))
    return mlp(norm=norm, **mlp_kwargs)


@dataclass
class BatchSizeSweep:
    """What :func:`batch_size_sweep` returns.

    Attributes:
        norms: the arms, e.g. :data:`SWEEP_NORMS`.
        batch_sizes: the batch sizes.
        seeds: the seeds.
        steps: ``{batch size: SGD steps per run}``.
        results: ``{batch size: Results}`` of the protocol, one arm per norm.
        arms: ``{(norm, batch size): CachedArm}`` holding every run made (and its model).
    """

    norms: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: dict[int, int]
    results: dict[int, Results]
    arms: dict[tuple[str, int], CachedArm]

    def error(self, norm: str, batch_size: int) -> Interval:
        """Test error (in [0, 1]) of ``norm`` at ``batch_size``: mean and 95% interval."""
        acc = self.results[batch_size].summary("test_accuracy")[norm]
        return Interval(1 - acc.mean, 1 - acc.high, 1 - acc.low, acc.n,
                        tuple(1 - v for v in acc.values), acc.level)

    def lr(self, norm: str, batch_size: int) -> float:
        """The learning rate chosen on validation for ``norm`` at ``batch_size``."""
        return self.results[batch_size].lrs[norm]

    def models(self, norm: str, batch_size: int) -> list[nn.Module]:
        """The trained models at the chosen learning rate, one per seed."""
        arm, steps = self.arms[(norm, batch_size)], self.steps[batch_size]
        return [arm.model(self._split, steps, self.lr(norm, batch_size), s)
                for s in self.seeds]

    _split: Split | None = None


def batch_size_sweep(split: Split, norms: Sequence[str] = SWEEP_NORMS,
                     batch_sizes: Sequence[int] = (2, 8, 32), seeds: Sequence[int] = (0, 1, 2),
                     epochs: float = 1.0, momentum: float = 0.9, base_lr: float = 0.1,
                     report_seeds: Sequence[int] | None = None, **mlp_kwargs
                     ) -> BatchSizeSweep:
    """Test error of each normalization at each batch size, each with its own learning rate.

    At batch size ``B`` every run takes :func:`steps_for_epochs` steps (the same number of
    samples for every ``B``), SGD with ``momentum``. Each arm's learning rate is chosen on
    validation (final validation accuracy, mean over ``seeds``) from a slice of the shared
    grid that starts around :func:`scaled_lr` ``(B, base_lr)`` and widens until its best
    point is inside; the reported test error is that of the runs at the chosen rate.
    Seed ``s`` initializes every network with ``torch.manual_seed(s)`` and orders its
    batches with seed ``s``. Models are built in the dtype of the split's inputs (float64
    with :func:`~bnlib.experiments.precision.double_split`, so that runs reproduce on other
    CPUs).

    Args:
        split: the data, with a validation set.
        norms: arms from :data:`SWEEP_NORMS`. Default: all of them.
        batch_sizes: samples per step. Default: ``(2, 8, 32)``.
        seeds: at least 3 for the protocol. Default: ``(0, 1, 2)``.
        epochs: passes over the training part. Default: ``1.0``.
        momentum: SGD momentum (Wu & He use ``0.9``). Default: ``0.9``.
        base_lr: the rate at batch 32 the first slice is centred on. Default: ``0.1``.
        report_seeds: the seeds whose runs at the chosen rate are reported (a superset of
            ``seeds``: the protocol asks for 5 where an effect is within 3x of the
            seed-to-seed spread); the rate is still chosen with ``seeds``. Default:
            ``None`` (= ``seeds``).
        **mlp_kwargs: passed to :func:`bnlib.experiments.mlp` (``depth``, ``activation``).

    Returns:
        A :class:`BatchSizeSweep`.
    """
    unknown = [n for n in norms if n not in SWEEP_NORMS]
    if unknown:
        raise ValueError(f"expected norms in {list(SWEEP_NORMS)} (got {unknown})")
    sweep_model("batch", **mlp_kwargs)  # fail early on a bad model argument
    n_train = len(split.x_train)
    steps = {int(b): steps_for_epochs(n_train, b, epochs) for b in batch_sizes}
    results: dict[int, Results] = {}
    arms: dict[tuple[str, int], CachedArm] = {}
    for b in steps:
        common = {"batch_size": b, "momentum": momentum, "eval_every": steps[b],
                  "train_accuracy": False}
        bs_arms = []
        for norm in norms:
            kwargs = dict(common)
            if norm == "renorm":
                kwargs["on_step"] = RenormSchedule(steps[b])
            build = cast_like(lambda norm=norm: sweep_model(norm, **mlp_kwargs), split)
            arm = CachedArm(norm, build, train_kwargs=kwargs)
            arms[(norm, b)] = arm
            bs_arms.append(arm)
        results[b] = run_widening(bs_arms, split, steps[b], seeds, start=scaled_lr(b, base_lr))
        if report_seeds is not None:
            chosen = results[b]
            results[b] = run(bs_arms, split, steps[b], report_seeds, lr=dict(chosen.lrs))
            results[b].choices = chosen.choices
    reported = seeds if report_seeds is None else report_seeds
    sweep = BatchSizeSweep(tuple(norms), tuple(steps), tuple(int(s) for s in reported),
                           steps, results, arms)
    sweep._split = split
    return sweep
