"""The Lightning and accelerate recipes of docs/integrations.md, run exactly as written there (the code block after
each ``<!-- recipe: ... -->`` marker), with a closure optimizer, a Hessian one, Schedule-Free and a plain one."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch

import optfit
from optfit.integrations import needs_closure

from .tiny import Regressor, loader, parameters

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
pytestmark = [pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True"),
              pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")]
NAMES = ["sania", "grad-avg", "adahessian", "schedule-free-adamw", "adamw"]


def recipe(name: str) -> dict:
    """Execute the recipe's code block; return its namespace."""
    text = DOC.read_text()
    match = re.search(rf"<!-- recipe: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"no recipe {name!r} in {DOC}"
    namespace: dict = {"__name__": f"recipe_{name}"}
    exec(compile(match.group(1), f"{DOC}:{name}", "exec"), namespace)
    return namespace


def _hparams(name: str) -> dict:
    return dict(optfit.optimizer_info(name).test_hparams)


def _loss(model) -> float:
    data = loader(16, 16).dataset
    with torch.no_grad():
        return float(model(data.x, data.y)["loss"])


# --------------------------------------------------------------------------------------------- accelerate
@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide singletons; start and leave them clean."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()

    reset()
    yield accelerate
    reset()


@pytest.mark.parametrize("name", NAMES)
def test_accelerate_recipe(name, fresh_accelerate):
    train = recipe("accelerate")["train_with_accelerate"]
    model = Regressor()
    start = _loss(model)
    trained = train(model, loader(), name, steps=6, **_hparams(name))
    assert _loss(trained) < start
    opt = optfit.create_optimizer(Regressor(), name, **_hparams(name))
    if needs_closure(opt):  # what the recipe avoids: accelerate's wrapper takes no loss=
        from accelerate import Accelerator

        wrapped = Accelerator().prepare(opt)
        with pytest.raises(TypeError):
            wrapped.step(loss=torch.tensor(1.0))


def test_accelerate_recipe_takes_the_steps_of_a_plain_loop(fresh_accelerate):
    """sania through the recipe = sania stepped by hand with a closure on the same batches."""
    model, reference = Regressor(), Regressor()
    recipe("accelerate")["train_with_accelerate"](model, loader(), "sania", steps=4)
    opt = optfit.create_optimizer(reference, "sania")
    for batch in list(loader()):
        def closure():
            opt.zero_grad()
            loss = reference(**batch)["loss"]
            loss.backward()
            return loss
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), parameters(reference)))


# ---------------------------------------------------------------------------------------------- Lightning
def _lightning_trainer(L, **kw):
    base = dict(accelerator="cpu", devices=1, max_steps=6, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**{**base, **kw})


@pytest.fixture
def lightning():
    L = pytest.importorskip("lightning")
    with warnings.catch_warnings():  # tiny data: Lightning's advice about workers and log intervals
        noise = "num_workers|log_every_n_steps|does not have many|val_dataloader"
        warnings.filterwarnings("ignore", message=f".*({noise}).*")
        yield L


@pytest.mark.parametrize("name", NAMES)
def test_lightning_recipe(name, lightning):
    module_cls = recipe("lightning")["OptfitModule"]
    model = Regressor()
    start = _loss(model)
    module = module_cls(model, name, **_hparams(name))
    trainer = _lightning_trainer(lightning, limit_val_batches=1, val_check_interval=2)
    trainer.fit(module, loader(), loader(8, 8))
    assert trainer.global_step == 6
    assert math.isfinite(_loss(model)) and _loss(model) < start
    opt = trainer.optimizers[0]
    if "train_mode" in opt.param_groups[0]:
        assert not opt.param_groups[0]["train_mode"]  # the model holds x after fit


def test_lightning_recipe_takes_the_steps_of_a_plain_loop(lightning):
    """grad-avg (two closure calls per step) through the recipe = by hand on the same batches."""
    model, reference = Regressor(), Regressor()
    module = recipe("lightning")["OptfitModule"](model, "grad-avg", lr=0.1)
    _lightning_trainer(lightning, max_steps=4).fit(module, loader())
    opt = optfit.create_optimizer(reference, "grad-avg", lr=0.1)
    for batch in list(loader()):
        def closure():
            opt.zero_grad()
            loss = reference(**batch)["loss"]
            loss.backward()
            return loss
        opt.step(closure)
    assert all(torch.equal(a, b) for a, b in zip(parameters(model), parameters(reference)))


def test_lightning_recipe_refuses_accumulation_with_a_closure_optimizer(lightning):
    module = recipe("lightning")["OptfitModule"](Regressor(), "sania")
    with pytest.raises(ValueError, match="accumulate_grad_batches=1"):
        _lightning_trainer(lightning, accumulate_grad_batches=2).fit(module, loader())
