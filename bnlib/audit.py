"""Audit a batch-norm module against ``torch.nn.BatchNorm1d``.

:class:`NaiveBatchNorm1d` re-creates, on purpose, the design of the module in the source
article's section 4 (a ``BatchNorm1d`` written in a dozen lines), defects included, and
:class:`CorrectedBatchNorm1d` is the same module with each audited behaviour fixed. Each ``check_*`` function
takes a module class, builds it with ``module_cls(num_features)``, probes one behaviour, and
returns a :class:`CheckResult` with the measured evidence. ``torch.nn.BatchNorm1d``,
:class:`bnlib.torch.BatchNorm1d` and :class:`CorrectedBatchNorm1d` pass every check;
:class:`NaiveBatchNorm1d` fails every one. :func:`grade` prints the verdict for a reader's
module.

Example:
    >>> import torch
    >>> [r.passed for r in run_audit(torch.nn.BatchNorm1d)] == [True] * len(CHECKS)
    True
    >>> any(r.passed for r in run_audit(NaiveBatchNorm1d))
    False
"""
from __future__ import annotations

import gc
import textwrap
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from bnlib.report import below

__all__ = [
    "CHECKS", "DEFECTS", "CheckResult", "CorrectedBatchNorm1d",
    "NaiveBatchNorm1d", "grade", "check_accepts_3d_input",
    "check_backward_through_eval_after_training", "check_normalizes_with_biased_variance",
    "check_refuses_4d_input", "check_refuses_batch_of_one", "check_stats_carry_no_graph",
    "check_stats_follow_to", "check_stats_in_state_dict", "count_graph_nodes",
    "format_audit", "run_audit", "torch_channels_last_grad_bug", "CHOICES", "verdict",
]

ModuleClass = Callable[[int], nn.Module]


class NaiveBatchNorm1d(nn.Module):
    """A batch norm with the design of the source article's example, defects included.

    Training mode computes, per feature over the batch axis,

    .. math::

        \\mu_B = \\frac{1}{m}\\sum_i x_i, \\qquad
        s_B^2 = \\frac{1}{m - 1}\\sum_i (x_i - \\mu_B)^2, \\qquad
        y_i = \\gamma \\frac{x_i - \\mu_B}{\\sqrt{s_B^2 + \\epsilon}} + \\beta ,

    and ``running = (1 - momentum) * running + momentum * batch_statistic``.

    What the audit finds, one check each:

    * a design choice, not a defect: it normalizes with the *unbiased* variance
      :math:`s_B^2` where ``torch.nn`` uses the biased one (dividing by :math:`m`), so its
      outputs differ from ``torch.nn``'s and have variance :math:`(m-1)/m`;
    * ``running_mean`` and ``running_var`` are plain tensor attributes, not buffers: they are
      missing from ``state_dict()`` and ``.to()`` does not move or convert them;
    * the running statistics are computed from the input without ``detach()``, so they carry
      autograd history that grows by one graph per step (after ``backward()`` only the
      nodes; without a backward pass, every earlier input too);
    * it reduces over axis 0 only: a ``(N, C, L)`` or 4-D input raises a shape error for
      most sizes, but when ``L = 1`` or ``L = C`` (or a 4-D input's last size is ``C``)
      its statistics and :math:`\\gamma`, :math:`\\beta` broadcast along the wrong axis, and
      it returns wrong values, or a wrong shape, without an error;
    * a training batch of one sample gives :math:`s_B^2 = 0/0` = NaN instead of an error.

    :class:`CorrectedBatchNorm1d` is the same module with each of these changed.

    Args:
        num_features: ``C``.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of the new batch in the running averages. Default: ``0.1``.

    Shape:
        Input ``(N, C)``; output the same.

    Example:
        >>> bn = NaiveBatchNorm1d(3)
        >>> "running_mean" in bn.state_dict()
        False
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # Plain attributes, not buffers:
        self.running_mean = torch.zeros(num_features)
        self.running_var = torch.ones(num_features)

    def forward(self, x):
        m = self.momentum
        if self.training:
            mean = x.mean(dim=0)  # (C,) for (N, C)
            var = x.var(dim=0)  # divides by N - 1
            # Recorded by autograd: the statistics keep the graph.
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + m * var
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight * x_hat + self.bias

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class CorrectedBatchNorm1d(nn.Module):
    """:class:`NaiveBatchNorm1d` with each audited behaviour changed to ``torch.nn``'s.

    Training mode computes, per channel over the batch (and length) axes with
    :math:`n` values per channel,

    .. math::

        \\mu_B = \\frac{1}{n}\\sum_i x_i, \\quad
        \\sigma_B^2 = \\frac{1}{n}\\sum_i (x_i - \\mu_B)^2, \\quad
        y_i = \\gamma \\frac{x_i - \\mu_B}{\\sqrt{\\sigma_B^2 + \\epsilon}} + \\beta ,

    and updates the running statistics, without autograd history, with the unbiased
    :math:`\\frac{n}{n-1}\\sigma_B^2`, as ``torch.nn`` does (normalizing with the
    unbiased variance instead, as the naive module and makemore do, is a design choice:
    ``bnlib.experiments.bessel``). Short, for reading: :class:`bnlib.torch.BatchNorm1d`
    is the complete drop-in (``momentum=None``, ``affine``, ``track_running_stats``,
    dtypes, speed).

    Args:
        num_features: ``C``.
        eps: added to the variance. Default: ``1e-5``.
        momentum: weight of the new batch in the running averages. Default: ``0.1``.

    Shape:
        Input ``(N, C)`` or ``(N, C, L)``; output the same.

    Example:
        >>> bn, ref = CorrectedBatchNorm1d(3), nn.BatchNorm1d(3)
        >>> x = torch.randn(4, 3, 5)
        >>> bool(torch.allclose(bn(x), ref(x), atol=1e-6))
        True
        >>> sorted(bn.state_dict()) == sorted(ref.state_dict())
        True
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # Buffers: in state_dict(), moved and converted by .to().
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        if x.dim() not in (2, 3):  # validate once, in torch's words
            raise ValueError(
                f"expected 2D or 3D input (got {x.dim()}D input)")
        dims = (0,) if x.dim() == 2 else (0, 2)  # over N, or N and L
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
        if self.training:
            n = x.numel() // x.shape[1]  # values per channel
            if n < 2:
                raise ValueError("Expected more than 1 value per channel "
                                 f"when training, got input size {x.size()}")
            mean = x.mean(dim=dims)  # (C,)
            var = x.var(dim=dims, unbiased=False)  # (C,) biased
            with torch.no_grad():  # no autograd history in the buffers
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / (n - 1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        mean, var = mean.view(shape), var.view(shape)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight.view(shape) * x_hat + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one audit check.

    Attributes:
        name: the check's name, e.g. ``"stats_in_state_dict"``.
        passed: whether the module behaved like ``torch.nn.BatchNorm1d``.
        evidence: what was measured, in words and numbers.
        value: the key measured number where there is one (a difference, a count), else
            ``None``.
    """

    name: str
    passed: bool
    evidence: str
    value: float | None = None


def _inputs(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    """Seeded float64 inputs with a non-zero mean and a non-unit scale."""
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.randn(shape, generator=generator, dtype=torch.float64)


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"


def check_normalizes_with_biased_variance(module_cls: ModuleClass, num_features: int = 3,
                                          batch_size: int = 4) -> CheckResult:
    """Training-mode outputs equal ``torch.nn.BatchNorm1d``'s (biased variance, divide by m).

    Args:
        module_cls: called as ``module_cls(num_features)``.
        num_features: ``C``. Default: ``3``.
        batch_size: ``m``; small, so that ``m/(m-1)`` differs clearly from 1. Default: ``4``.
    """
    x = _inputs((batch_size, num_features))
    module, reference = module_cls(num_features).double(), nn.BatchNorm1d(num_features).double()
    with torch.no_grad():
        y, y_ref = module(x), reference(x)
    diff = float((y - y_ref).abs().max())
    out_var = float(y.var(dim=0, unbiased=False).mean())
    passed = torch.allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    return CheckResult("normalizes_with_biased_variance", passed,
                       f"max |y - y_torch| = {diff:.2e}; output variance {out_var:.4f} "
                       f"(torch.nn: 1 - O(eps))", diff)


def check_stats_in_state_dict(module_cls: ModuleClass, num_features: int = 3,
                              steps: int = 5) -> CheckResult:
    """``running_mean``/``running_var`` are in ``state_dict()`` and survive a save and load:
    a fresh module that loads the state dict gives the same evaluation outputs."""
    trained = module_cls(num_features).double()
    with torch.no_grad():
        for step in range(steps):
            trained(_inputs((8, num_features), seed=step))
    state = trained.state_dict()
    keys = sorted(state)
    restored = module_cls(num_features).double()
    restored.load_state_dict(state)
    x = _inputs((8, num_features), seed=100)
    with torch.no_grad():
        diff = float((trained.eval()(x) - restored.eval()(x)).abs().max())
    has_keys = {"running_mean", "running_var"} <= set(keys)
    passed = has_keys and diff <= 1e-12
    return CheckResult("stats_in_state_dict", passed,
                       f"state_dict keys {keys}; eval max diff after reload {diff:.2e}", diff)


def check_stats_follow_to(module_cls: ModuleClass, num_features: int = 3) -> CheckResult:
    """``.to(dtype)`` and ``.to(device)`` move the running statistics with the parameters.

    The device move uses PyTorch's ``"meta"`` device, so the check runs without a GPU.
    """
    module = module_cls(num_features).to(torch.float64)
    dtypes = (str(module.running_mean.dtype), str(module.running_var.dtype))
    weight_dtype = str(module.weight.dtype)
    module = module.to("meta")
    devices = (module.running_mean.device.type, module.running_var.device.type)
    passed = dtypes == ("torch.float64",) * 2 and devices == ("meta",) * 2
    return CheckResult("stats_follow_to", passed,
                       f".to(float64): running stats {dtypes[0]}, weight {weight_dtype}; "
                       f".to('meta'): running stats on {devices[0]}, weight on "
                       f"{module.weight.device.type}")


def count_graph_nodes(tensor: Tensor) -> int:
    """The number of autograd nodes reachable from ``tensor.grad_fn`` (0 for a leaf or a
    tensor without history): a measure of the graph, and memory, a tensor keeps alive.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> count_graph_nodes((2 * x).sum()), count_graph_nodes(x.detach())
        (3, 0)
    """
    seen: set[int] = set()
    stack = [tensor.grad_fn] if tensor.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return len(seen)


def check_stats_carry_no_graph(module_cls: ModuleClass, num_features: int = 3,
                               steps: int = 5) -> CheckResult:
    """Running statistics carry no autograd history, so nothing accumulates across steps.

    Runs ``steps`` training-mode forward passes on inputs that require gradients (as the
    output of a previous layer does), and after each one counts the autograd nodes held by
    ``running_mean`` and ``running_var`` and the earlier inputs still alive.
    """
    module = module_cls(num_features).double()
    nodes, alive = [], []
    refs = []
    for step in range(steps):
        x = _inputs((8, num_features), seed=step).requires_grad_()
        refs.append(weakref.ref(x))
        module(x)
        del x
        gc.collect()
        nodes.append(count_graph_nodes(module.running_mean)
                     + count_graph_nodes(module.running_var))
        alive.append(sum(r() is not None for r in refs))
    passed = max(nodes) == 0 and max(alive) == 0
    return CheckResult("stats_carry_no_graph", passed,
                       f"graph nodes held by running stats after steps 1..{steps}: {nodes}; "
                       f"inputs kept alive: {alive}", float(nodes[-1]))


def check_backward_through_eval_after_training(module_cls: ModuleClass,
                                               num_features: int = 3) -> CheckResult:
    """A training step (forward and backward) followed by an evaluation-mode forward and
    backward works, as when fine-tuning with frozen batch-norm statistics."""
    torch.manual_seed(0)
    linear = nn.Linear(num_features, num_features).double()
    module = module_cls(num_features).double()
    module(linear(_inputs((8, num_features)))).square().sum().backward()
    module.eval()
    try:
        module(linear(_inputs((8, num_features), seed=1))).square().sum().backward()
    except RuntimeError as exc:
        return CheckResult("backward_through_eval_after_training", False, _error(exc))
    return CheckResult("backward_through_eval_after_training", True,
                       "second backward (eval mode) succeeded")


def check_accepts_3d_input(module_cls: ModuleClass, num_features: int = 3,
                           lengths: tuple[int, ...] | None = None) -> CheckResult:
    """A ``(N, C, L)`` input is normalized per channel over ``N`` and ``L``, as by
    ``torch.nn.BatchNorm1d``, in training and then in evaluation mode.

    Each length is probed with a fresh module. ``L = 1`` and ``L = C`` are in the default
    probe because a module that reduces over ``N`` only raises a shape error for most
    lengths but not for these: its ``(C, L)`` statistics and ``(C,)`` parameters then
    broadcast along the wrong axis, and it returns wrong values, or a wrong shape, without
    an error.

    Args:
        module_cls: called as ``module_cls(num_features)``.
        num_features: ``C``. Default: ``3``.
        lengths: the lengths ``L`` to probe. Default: ``(5, 1, num_features)``.
    """
    lengths = (5, 1, num_features) if lengths is None else tuple(lengths)
    outcomes, diffs = [], []
    for length in lengths:
        x = _inputs((4, num_features, length))
        module = module_cls(num_features).double()
        reference = nn.BatchNorm1d(num_features).double()
        try:
            with torch.no_grad():
                train = module(x), reference(x)
                module.eval(), reference.eval()
                evaluation = module(x), reference(x)
        except (RuntimeError, ValueError) as exc:
            outcomes.append((length, False, _error(exc)))
            continue
        wrong = [tuple(y.shape) for y, _ in (train, evaluation) if y.shape != x.shape]
        if wrong:
            outcomes.append((length, False, f"no error, output shape {wrong[0]} for input "
                                            f"{tuple(x.shape)}"))
            continue
        d = [float((y - y_ref).abs().max()) for y, y_ref in (train, evaluation)]
        diffs.append(max(d))
        ok = max(d) <= 1e-10
        outcomes.append((length, ok, f"{'' if ok else 'no error, '}max |y - y_torch| "
                                     f"train {below(d[0])}, eval {below(d[1])}"))
    passed = all(ok for _, ok, _ in outcomes)
    return CheckResult("accepts_3d_input", passed, _per_probe(outcomes, "L = "),
                       max(diffs) if diffs else None)


def _per_probe(outcomes: list[tuple[object, bool, str]], label: str = "") -> str:
    """``"L = 5: ...; L = 1: ..."``, or one text for all probes where they agree."""
    texts = {text for _, _, text in outcomes}
    if len(texts) == 1:
        probes = ", ".join(str(probe) for probe, _, _ in outcomes)
        return f"{label}{probes}: {texts.pop()}"
    return "; ".join(f"{label}{probe}: {text}" for probe, _, text in outcomes)


def check_refuses_4d_input(module_cls: ModuleClass, num_features: int = 3,
                           shapes: tuple[tuple[int, ...], ...] | None = None) -> CheckResult:
    """A 4-D input raises ``ValueError: expected 2D or 3D input (got 4D input)``.

    The default probe includes a last size equal to ``C``, where a module that reduces over
    ``N`` only broadcasts its ``(C,)`` parameters along the last axis and returns a tensor
    without an error.

    Args:
        module_cls: called as ``module_cls(num_features)``.
        num_features: ``C``. Default: ``3``.
        shapes: the 4-D input shapes to probe. Default: ``((4, C, 2, 2), (2, C, 4, C))``.
    """
    if shapes is None:
        shapes = ((4, num_features, 2, 2), (2, num_features, 4, num_features))
    outcomes = []
    for shape in shapes:
        x = _inputs(tuple(shape))
        try:
            with torch.no_grad():
                y = module_cls(num_features).double()(x)
        except ValueError as exc:
            ok = "expected 2D or 3D input (got 4D input)" in str(exc)
            outcomes.append((shape, ok, _error(exc)))
        except RuntimeError as exc:
            outcomes.append((shape, False, f"not a clear ValueError: {_error(exc)}"))
        else:
            outcomes.append((shape, False,
                             f"no error; returned a tensor of shape {tuple(y.shape)}"))
    passed = all(ok for _, ok, _ in outcomes)
    return CheckResult("refuses_4d_input", passed,
                       _per_probe([(tuple(shape), ok, text) for shape, ok, text in outcomes]))


def check_refuses_batch_of_one(module_cls: ModuleClass, num_features: int = 3) -> CheckResult:
    """Training on one sample raises ``ValueError: Expected more than 1 value per channel when
    training`` (a variance from one value is meaningless); evaluation on one sample works."""
    module = module_cls(num_features).double()
    one = _inputs((1, num_features))
    with torch.no_grad():
        y_eval = module.eval()(one)
        module.train()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the naive module's var() warns, then NaNs
                y = module(one)
        except ValueError as exc:
            ok = "Expected more than 1 value per channel" in str(exc)
            passed = ok and bool(torch.isfinite(y_eval).all())
            return CheckResult("refuses_batch_of_one", passed, _error(exc))
    nan = int(torch.isnan(y).sum())
    return CheckResult("refuses_batch_of_one", False,
                       f"no error; {nan} of {y.numel()} outputs are NaN", float(nan))


#: Every check, in the order of the audit table; each takes a module class and returns a
#: :class:`CheckResult`.
CHECKS: tuple[Callable[[ModuleClass], CheckResult], ...] = (
    check_normalizes_with_biased_variance,
    check_stats_in_state_dict,
    check_stats_follow_to,
    check_stats_carry_no_graph,
    check_backward_through_eval_after_training,
    check_accepts_3d_input,
    check_refuses_4d_input,
    check_refuses_batch_of_one,
)


#: What a module that passes each check does, and a hint for one that fails it.
DEFECTS: dict[str, tuple[str, str]] = {
    "normalizes_with_biased_variance": (
        "normalizes with the biased variance, as torch.nn (a choice)",
        "x.var(dim, unbiased=False) to normalize; the unbiased one for running_var"),
    "stats_in_state_dict": (
        "running statistics are saved and loaded with state_dict()",
        "self.register_buffer('running_mean', torch.zeros(C)), same for running_var"),
    "stats_follow_to": (
        "running statistics follow .to(dtype) and .to(device)",
        "buffers follow .to(); plain tensor attributes do not"),
    "stats_carry_no_graph": (
        "running statistics carry no autograd history",
        "update them in place under torch.no_grad()"),
    "backward_through_eval_after_training": (
        "backward in eval mode after a training step works",
        "the running statistics must not hold the training step's graph"),
    "accepts_3d_input": (
        "(N, C, L) input: statistics per channel over N and L",
        "reduce over dims (0, 2); view mean, var, weight, bias as (1, C, 1)"),
    "refuses_4d_input": (
        "4-D input: ValueError 'expected 2D or 3D input (got 4D input)'",
        "check x.dim() first in forward and raise ValueError in torch's words"),
    "refuses_batch_of_one": (
        "one training sample: ValueError 'Expected more than 1 value per channel'",
        "raise ValueError when N * L < 2 in training mode"),
}


def grade(module_cls: ModuleClass) -> list[CheckResult]:
    """Run the audit on ``module_cls`` and print a verdict per check, with a hint for each
    failed one (the grader of chapter 4's exercise).

    Args:
        module_cls: called as ``module_cls(num_features)``; the reader's module.

    Returns:
        The :func:`run_audit` results.

    Example:
        >>> _ = grade(nn.BatchNorm1d)  # doctest: +NORMALIZE_WHITESPACE
        PASS  normalizes with the biased variance, as torch.nn (a choice)
        PASS  running statistics are saved and loaded with state_dict()
        PASS  running statistics follow .to(dtype) and .to(device)
        PASS  running statistics carry no autograd history
        PASS  backward in eval mode after a training step works
        PASS  (N, C, L) input: statistics per channel over N and L
        PASS  4-D input: ValueError 'expected 2D or 3D input (got 4D input)'
        PASS  one training sample: ValueError 'Expected more than 1 value per channel'
        8 of 8 checks pass
    """
    results = run_audit(module_cls)
    for r in results:
        title, hint = DEFECTS[r.name]
        print(f"{'PASS' if r.passed else 'FAIL'}  {title}")
        if not r.passed:
            for label, text in (("measured", r.evidence), ("hint", hint)):
                print(textwrap.fill(f"{label}: {text}", 79, initial_indent=" " * 6,
                                    subsequent_indent=" " * 8))
    print(f"{sum(r.passed for r in results)} of {len(results)} checks pass")
    return results


def run_audit(module_cls: ModuleClass) -> list[CheckResult]:
    """Run every check in :data:`CHECKS` on ``module_cls``; return the results in order."""
    return [check(module_cls) for check in CHECKS]


#: Checks where ``torch.nn``'s behaviour is one design choice among others, not the only
#: correct one: a module that differs there differs, it is not defective.
CHOICES = frozenset({"normalizes_with_biased_variance"})


def verdict(result: CheckResult) -> str:
    """``"PASS"``, ``"FAIL"``, or ``"DIFFERS"`` for a failed check of :data:`CHOICES` (a
    design choice other than ``torch.nn``'s, not a defect).

    Example:
        >>> verdict(check_normalizes_with_biased_variance(NaiveBatchNorm1d))
        'DIFFERS'
    """
    if result.passed:
        return "PASS"
    return "DIFFERS" if result.name in CHOICES else "FAIL"


def format_audit(results: dict[str, list[CheckResult]]) -> str:
    r"""A plain-text table of :func:`verdict`\ s: one row per check, one column per audited
    module.

    Args:
        results: module name to its :func:`run_audit` results (same checks, same order).

    Example:
        >>> table = format_audit({"torch.nn": run_audit(nn.BatchNorm1d)})
        >>> print(table.splitlines()[0])
        check                                 torch.nn
    """
    names = list(results)
    checks = [r.name for r in results[names[0]]]
    width = max(len(c) for c in checks) + 2
    columns = [max(len(n), 7) for n in names]
    lines = ["check".ljust(width) + "  ".join(n.ljust(w) for n, w in zip(names, columns))]
    for i, check in enumerate(checks):
        cells = (verdict(results[n][i]) for n in names)
        lines.append(check.ljust(width) + "  ".join(c.ljust(w) for c, w in zip(cells, columns)))
    return "\n".join(line.rstrip() for line in lines)


def torch_channels_last_grad_bug(seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """A bug of torch's own CPU kernel that differential testing finds: training-mode
    ``BatchNorm2d`` gradients for an input stored channels-last whose size-1 dims carry
    unusual strides, ``torch.as_strided(t, (1, 2, 1, 3), (1, 1, 2, 2))``, with a contiguous
    ``dy``.

    The input's memory is in channels-last (NHWC) order: element ``(c, w)`` sits at offset
    ``c + 2 w``. Only the strides of its two size-1 dims are unusual: a tensor that torch
    itself makes channels-last with this shape has strides ``(6, 1, 6, 2)``, and the same
    memory viewed with those strides gets the right gradients.

    The bias gradient of batch norm is :math:`\\partial L / \\partial \\beta_c = \\sum_i
    g_{ic}`, whatever the layout; torch 2.13 returns other numbers for this input, while a
    contiguous copy of the same values, and :class:`bnlib.torch.BatchNorm2d` on the strided
    input, return the right ones.

    Args:
        seed: seeds the input and ``dy``. Default: ``0``.

    Returns:
        ``{"torch": ..., "contiguous_copy": ..., "usual_strides": ..., "bnlib": ...}``:
        ``torch.nn`` on the input, on a contiguous copy, on the same memory with strides
        ``(6, 1, 6, 2)``, and ``bnlib.torch`` on the input; each a dict with
        ``input_grad``, ``weight_grad``, ``bias_grad`` and ``sum_dy`` (the right bias grad).

    Example:
        >>> answers = torch_channels_last_grad_bug()
        >>> right = answers["contiguous_copy"]
        >>> bool(torch.allclose(right["bias_grad"], right["sum_dy"]))
        True
    """
    import bnlib.torch as bt

    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(6, generator=generator)
    dy = torch.randn(1, 2, 1, 3, generator=generator)  # contiguous
    answers = {}
    unusual, usual = (1, 1, 2, 2), (6, 1, 6, 2)  # the same offsets: c + 2 w
    for name, module_cls, strides, contiguous in (
            ("torch", nn.BatchNorm2d, unusual, False),
            ("contiguous_copy", nn.BatchNorm2d, unusual, True),
            ("usual_strides", nn.BatchNorm2d, usual, False),
            ("bnlib", bt.BatchNorm2d, unusual, False)):
        x = torch.as_strided(values.clone(), (1, 2, 1, 3), strides)
        x = (x.contiguous() if contiguous else x).requires_grad_()
        bn = module_cls(2)
        bn(x).backward(dy)
        answers[name] = {"input_grad": x.grad, "weight_grad": bn.weight.grad,
                         "bias_grad": bn.bias.grad, "sum_dy": dy.sum(dim=(0, 2, 3))}
    return answers
