"""scale_lr: lr·B/B₀ (linear) or lr·√(B/B₀) (sqrt), the rule picked from the optimizer's registry record."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit import schedules as S


def test_the_two_rules():
    assert S.scale_lr(0.1, 512, 128, rule="linear") == pytest.approx(0.4)
    assert S.scale_lr(0.1, 512, 128, rule="sqrt") == pytest.approx(0.2)
    assert S.scale_lr(3e-4, 32, 128, rule="sqrt") == pytest.approx(1.5e-4)
    assert S.scale_lr(0.1, 64, 64, rule="linear") == 0.1


@pytest.mark.parametrize("name, rule", [("sgd", "linear"), ("grad-avg", "linear"), ("gravity", "linear"),
                                        ("gap-sgd", "linear"), ("adamw", "sqrt"), ("adam", "sqrt"),
                                        ("adafactor", "sqrt"), ("rmsprop", "sqrt"), ("lion", "sqrt"),
                                        ("clion", "sqrt"), ("muon", "sqrt"), ("gap-adamw", "sqrt"),
                                        ("schedule-free-sgd", "linear"), ("schedule-free-adamw", "sqrt")])
def test_rule_from_the_registry(name, rule):
    assert S.batch_scaling_rule(name) == rule
    factor = 4.0 if rule == "linear" else 2.0
    assert S.scale_lr(0.01, 256, 64, rule=name) == pytest.approx(0.01 * factor)


def test_rule_from_an_optimizer_instance_or_class():
    model = torch.nn.Linear(3, 2)
    assert S.batch_scaling_rule(optfit.create_optimizer(model, "sgd", lr=0.1)) == "linear"
    assert S.batch_scaling_rule(optfit.create_optimizer(model, "adamw")) == "sqrt"
    assert S.batch_scaling_rule(optfit.optimizer_info("lion").cls) == "sqrt"
    assert S.batch_scaling_rule(torch.optim.SGD) == "linear"
    assert S.batch_scaling_rule(torch.optim.AdamW(model.parameters())) == "sqrt"
    assert S.scale_lr(1.0, 8, 2, rule=torch.optim.SGD(model.parameters(), lr=1.0)) == 4.0


def test_learning_rate_free_optimizers_have_no_rule():
    free = [n for n in optfit.list_optimizers() if optfit.optimizer_info(n).family == "learning-rate-free"
            and not n.startswith("schedule-free")]
    assert {"dog", "prodigy"} <= set(free)
    for name in free:
        with pytest.raises(ValueError, match="learning-rate-free"):
            S.scale_lr(1.0, 8, 2, rule=name)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-0.1), "lr"), (dict(lr=math.inf), "lr"), (dict(lr="0.1"), "lr"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=2.5), "batch_size"),
    (dict(base_batch_size=-4), "base_batch_size"),
    (dict(rule="cubic"), "rule"), (dict(rule=object()), "rule"), (dict(rule=torch.nn.Linear), "rule"),
])
def test_clear_errors(kwargs, name):
    class Custom(torch.optim.Optimizer):
        pass

    args = dict(lr=0.1, batch_size=64, base_batch_size=32, rule="sqrt") | kwargs
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        S.scale_lr(**args)
    with pytest.raises(ValueError, match="not in optfit's registry"):
        S.scale_lr(0.1, 64, 32, rule=Custom)
