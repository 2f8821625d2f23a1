"""Rule 5 of chapter 4: the fine-tuning options prepare batch norm as they say."""

import pytest
import torch

from bnlib.experiments import load_digits_split, run
from bnlib.experiments.finetune import class_subset, finetune_arms
from bnlib.experiments.frozen_bn import FrozenStatsBatchNorm
from bnlib.experiments.stats_error import running_stats_error
from bnlib.torch.precise import batch_norm_layers


def test_class_subset_keeps_only_those_classes_in_every_part():
    split = load_digits_split()
    sub = class_subset(split, [5, 6, 7, 8, 9])
    for y in (sub.y_train, sub.y_val, sub.y_test):
        assert set(y.tolist()) == {5, 6, 7, 8, 9}
    assert len(sub.y_train) == int((split.y_train >= 5).sum())
    torch.testing.assert_close(sub.x_test, split.x_test[split.y_test >= 5], rtol=0, atol=0)


def test_finetune_arms_prepare_the_statistics_and_share_one_pretrained_network_per_seed():
    split = load_digits_split()
    pre, ft = class_subset(split, range(5)), class_subset(split, range(5, 10))
    arms = {a.name: a for a in finetune_arms(pre, ft, pretrain_lr=0.1, pretrain_steps=30)}
    nets = {}
    for name, arm in arms.items():
        torch.manual_seed(4)
        nets[name] = arm.build()
    stats = {n: [m.running_mean for m in batch_norm_layers(net)] for n, net in nets.items()}
    # updated and frozen start from the same pretraining statistics; recomputed does not.
    assert all(torch.equal(a, b) for a, b in zip(stats["updated"], stats["frozen"]))
    assert not torch.equal(stats["frozen"][0], stats["recomputed"][0])
    assert not any(isinstance(m, FrozenStatsBatchNorm) for m in nets["updated"].modules())
    assert isinstance(nets["recomputed"][1], FrozenStatsBatchNorm)
    # Recomputed statistics are those of the fine-tuning data (the first layer's exactly).
    first = nets["recomputed"][1].bn
    z = nets["recomputed"][0](ft.x_train).detach()
    torch.testing.assert_close(first.running_mean, z.mean(0), rtol=1e-4, atol=1e-5)
    # Deeper layers: recomputed with batch statistics upstream, measured in eval mode.
    recomputed = running_stats_error(nets["recomputed"], ft.x_train)
    assert recomputed < 0.25 * running_stats_error(nets["frozen"], ft.x_train)
    torch.manual_seed(5)
    other = arms["frozen"].build()  # another seed: another pretrained network
    assert not torch.equal(other[0].weight, nets["frozen"][0].weight)


def test_finetuning_runs_under_the_protocol():
    split = load_digits_split()
    pre, ft = class_subset(split, range(5)), class_subset(split, range(5, 10))
    r = run(
        finetune_arms(pre, ft, pretrain_lr=0.1, pretrain_steps=30, eval_every=20),
        ft,
        20,
        seeds=(0, 1),
        lr=0.01,
    )
    assert sorted(r.histories) == ["frozen", "recomputed", "updated"]
    assert all(0 <= v <= 1 for v in r.values("frozen", "test_accuracy"))


def test_finetune_arms_build_in_the_pretraining_split_dtype():
    from bnlib.experiments.precision import double_split

    split = double_split(load_digits_split())
    pre, ft = class_subset(split, range(5)), class_subset(split, range(5, 10))
    torch.manual_seed(0)
    net = finetune_arms(pre, ft, pretrain_lr=0.1, pretrain_steps=5)[2].build()
    assert {p.dtype for p in net.parameters()} == {torch.float64}
    assert all(m.running_mean.dtype == torch.float64 for m in batch_norm_layers(net))


def test_a_last_bit_change_grows_with_two_sample_statistics_and_not_with_fixed_ones():
    # float64, so that "rounding level" is about 1e-16; the frozen and recomputed networks
    # carry a one-ulp change of their first weights through fine-tuning at about that
    # level, the updated one (two-sample statistics in training mode) amplifies it.
    from bnlib.experiments.finetune import last_bit_sensitivity
    from bnlib.experiments.precision import double_split

    split = double_split(load_digits_split())
    pre, ft = class_subset(split, range(5)), class_subset(split, range(5, 10))
    arms = {a.name: a for a in finetune_arms(pre, ft, pretrain_lr=0.1, pretrain_steps=50)}
    change = {n: last_bit_sensitivity(a, ft, steps=100, lr=0.1) for n, a in arms.items()}
    assert change["frozen"] < 1e-11 and change["recomputed"] < 1e-11, change
    assert change["updated"] > 1e-2, change
    no_val = type(ft)(ft.x_train, ft.y_train, ft.x_test, ft.y_test, None, None)
    with pytest.raises(ValueError, match="validation"):
        last_bit_sensitivity(arms["frozen"], no_val, steps=1, lr=0.1)
