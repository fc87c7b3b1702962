"""OptfitTrainer: every registry optimizer runs under the Hugging Face Trainer, closure and Hessian optimizers take
the same steps as a hand-written loop (gradient accumulation included), checkpoints resume bit for bit, and
Schedule-Free checkpoints and final weights are the evaluation weights x."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

import optfit  # noqa: E402
from optfit.integrations import needs_closure, unwrap  # noqa: E402
from optfit.integrations.transformers import OptfitTrainer  # noqa: E402

from .tiny import Pairs, Regressor, parameters  # noqa: E402

CLOSURE_OR_HESSIAN = ["sania", "celo", "celo-adam", "grad-avg", "adahessian", "fosi"]


def _args(out: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                use_cpu=True, report_to="none", disable_tqdm=True, logging_strategy="no", save_strategy="no",
                seed=0)
    return TrainingArguments(**{**base, **kw})


def _hparams(name: str) -> dict:
    hp = dict(optfit.optimizer_info(name).test_hparams)
    hp.pop("total_steps", None)  # OptfitTrainer sets Celo's from the run
    return hp


class _StopAt(TrainerCallback):
    """Interrupts training after ``step`` optimizer steps (as a killed job would, after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


# --------------------------------------------------------------------------------------------- runs at all
@pytest.mark.parametrize("name", [n for n in optfit.list_optimizers() if not optfit.optimizer_info(n).needs_batch])
def test_every_registry_optimizer_trains(name, tmp_path):
    model = Regressor(dropout=0.1)
    before = parameters(model)
    trainer = OptfitTrainer(model=model, args=_args(tmp_path), train_dataset=Pairs(),
                            optimizer_name=name, optimizer_kwargs=_hparams(name))
    out = trainer.train()
    assert trainer.state.global_step == 3 and math.isfinite(out.training_loss)
    after = parameters(model)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("name", ["adamw", "prodigy", "adafisher", "muon"])
def test_other_optimizers_take_the_steps_of_the_plain_trainer(name, tmp_path):
    """For optimizers that need nothing special, OptfitTrainer(optimizer_name=...) is Trainer(optimizers=...)."""
    results = []
    for cls in (OptfitTrainer, Trainer):
        model = Regressor(dropout=0.1)
        kw = dict(optimizer_name=name, optimizer_kwargs=_hparams(name)) if cls is OptfitTrainer else dict(
            optimizers=(optfit.create_optimizer(model, name, **_hparams(name)), None))
        cls(model=model, args=_args(tmp_path / cls.__name__), train_dataset=Pairs(), **kw).train()
        results.append(parameters(model))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# --------------------------------------------------------------------------- the steps a loop should take
def _reference(name: str, hparams: dict, steps: int, data: Pairs) -> list[torch.Tensor]:
    """Full-batch steps by hand: step(closure) for closure optimizers, create_graph=True when a step needs it."""
    model = Regressor(dtype=torch.float64)
    opt = optfit.create_optimizer(model, name, **hparams)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = model(data.x, data.y)["loss"]
        graph = getattr(type(opt), "needs_create_graph", False) and opt.next_step_needs_graph()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss.backward(create_graph=graph)
        return loss

    for _ in range(steps):
        if needs_closure(opt):
            opt.step(closure)
        else:
            closure()
            opt.step()
    return parameters(model)


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("name, extra", [(n, {}) for n in CLOSURE_OR_HESSIAN] + [("adahessian", {"update_period": 2})])
def test_closure_and_hessian_optimizers_take_the_reference_steps(name, extra, accumulation, tmp_path):
    """float64, full batch (8 examples in 8/accumulation-sized micro-batches): the Trainer's trajectory is the
    hand-written loop's, so the closure's loss and its re-evaluation cover every micro-batch, scaled as
    back-propagated, and create_graph reaches the Hessian steps. Celo's total_steps comes from max_steps."""
    steps, data = 5, Pairs(8, dtype=torch.float64)
    hp = {**_hparams(name), **extra}
    ref_hp = {**hp, "total_steps": steps} if "total_steps" in optfit.optimizer_info(name).defaults else hp
    expected = _reference(name, ref_hp, steps, data)
    model = Regressor(dtype=torch.float64)
    args = _args(tmp_path, max_steps=steps, per_device_train_batch_size=8 // accumulation,
                 gradient_accumulation_steps=accumulation, max_grad_norm=0.0, lr_scheduler_type="constant")
    OptfitTrainer(model=model, args=args, train_dataset=data, optimizer_name=name, optimizer_kwargs=hp).train()
    for got, want in zip(parameters(model), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


class _Noisy(Regressor):
    """Records one random draw per forward (as dropout would consume the random stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[float] = []

    def forward(self, x, labels=None):
        self.draws.append(float(torch.rand(())))
        return super().forward(x, labels)


def test_the_closure_replays_each_micro_batch_with_its_random_state(tmp_path):
    """Grad-Avg's second gradient re-runs each micro-batch with the random state it had (same dropout masks), and
    the Trainer's own random stream continues as if the replay had not happened."""
    runs = {}
    for name in ("grad-avg", "sgd"):
        model = _Noisy()
        OptfitTrainer(model=model, args=_args(tmp_path / name), train_dataset=Pairs(),
                      optimizer_name=name, optimizer_kwargs={"lr": 0.1}).train()
        runs[name] = model.draws
    per_step = [runs["grad-avg"][i:i + 4] for i in range(0, len(runs["grad-avg"]), 4)]
    assert len(per_step) == 3
    for first, second, replay_first, replay_second in per_step:
        assert (replay_first, replay_second) == (first, second)
    assert [d for step in per_step for d in step[:2]] == runs["sgd"]


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("name", ["adamw", "sania", "celo", "adahessian", "schedule-free-adamw", "prodigy",
                                  "grad-avg"])
def test_resuming_from_a_checkpoint_is_bit_exact(name, tmp_path):
    """6 steps straight = 3 steps, checkpoint, interruption, resume in a fresh trainer and model, 3 more steps
    (dropout, gradient accumulation 2, an epoch boundary at step 4, the default linear lr decay)."""

    def run(out, stop=None, resume=None):
        model = Regressor(dropout=0.1, seed=1 if resume else 0)  # a resumed run starts from other weights
        args = _args(out, max_steps=6, save_strategy="steps", save_steps=3)
        trainer = OptfitTrainer(model=model, args=args, train_dataset=Pairs(8), optimizer_name=name,
                                optimizer_kwargs=_hparams(name), callbacks=[_StopAt(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return parameters(model), trainer

    straight, _ = run(tmp_path / "straight")
    _, interrupted = run(tmp_path / "interrupted", stop=3)
    assert interrupted.state.global_step == 3
    resumed, trainer = run(tmp_path / "resumed", resume=str(tmp_path / "interrupted" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------- Schedule-Free
def test_schedule_free_checkpoints_evaluation_and_saved_models_use_x(tmp_path):
    model = Regressor()
    args = _args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    trainer = OptfitTrainer(model=model, args=args, train_dataset=Pairs(), eval_dataset=Pairs(8),
                            optimizer_name="schedule-free-adamw", optimizer_kwargs={"lr": 0.05},
                            callbacks=[_StopAt(3)])
    trainer.train()
    opt = unwrap(trainer.optimizer)
    assert not opt.param_groups[0]["train_mode"]  # train() returns with the model holding x
    x = parameters(model)
    y = [opt.state[p]["y"].clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(x, y))
    saved = load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))
    assert all(torch.equal(saved[n], p) for (n, _), p in zip(model.named_parameters(), x))

    data = Pairs(8)
    with torch.no_grad():
        loss_at_x = float(model(data.x, data.y)["loss"])
    opt.train()  # back to y: evaluate() and save_model() switch to x and back
    assert trainer.evaluate()["eval_loss"] == pytest.approx(loss_at_x, rel=1e-6)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), y))
    trainer.save_model(str(tmp_path / "final"))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), y))
    final = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(torch.equal(final[n], p) for (n, _), p in zip(model.named_parameters(), x))


def test_schedule_free_evaluation_and_checkpoints_do_not_perturb_training(tmp_path):
    """The x/y swaps around each evaluation and checkpoint restore y exactly (no dropout: an evaluation's data
    loader draws from the global random stream, under any optimizer)."""
    results = []
    for extra in ({}, dict(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1)):
        model = Regressor()
        OptfitTrainer(model=model, args=_args(tmp_path / str(len(extra)), max_steps=4, **extra),
                      train_dataset=Pairs(), eval_dataset=Pairs(8), optimizer_name="schedule-free-adamw").train()
        results.append(parameters(model))
    assert all(torch.equal(a, b) for a, b in zip(*results))


# ------------------------------------------------------------------------------------- the Trainer's API
def test_a_user_built_closure_optimizer_and_scheduler(tmp_path):
    """optimizers=(SANIA, LambdaLR built on it before the Trainer wrapped it) works, the scheduler sees the
    steps (no 'lr_scheduler.step() before optimizer.step()' warning), and the steps are optimizer_name's."""
    results = []
    model = Regressor(dropout=0.1)
    opt = optfit.create_optimizer(model, "sania", lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step\\(\\)")
        OptfitTrainer(model=model, args=_args(tmp_path / "own"), train_dataset=Pairs(),
                      optimizers=(opt, sched)).train()
    assert sched.last_epoch == 3
    results.append(parameters(model))
    model = Regressor(dropout=0.1)
    OptfitTrainer(model=model, args=_args(tmp_path / "name", lr_scheduler_type="constant"), train_dataset=Pairs(),
                  optimizer_name="sania", optimizer_kwargs={"lr": 0.5}).train()
    results.append(parameters(model))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_tiny_gpt2_with_accumulation_and_evaluation(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0, attn_implementation="eager")  # eager: double backward

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n):
            self.ids = torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    for name in ("sania", "adahessian", "schedule-free-adamw"):
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        args = _args(tmp_path / name, per_device_train_batch_size=4, eval_strategy="steps", eval_steps=2)
        trainer = OptfitTrainer(model=model, args=args, train_dataset=Tokens(8), eval_dataset=Tokens(4),
                                optimizer_name=name, optimizer_kwargs={"lr": 0.01})
        assert math.isfinite(trainer.train().training_loss)
        assert math.isfinite(trainer.evaluate()["eval_loss"])


@pytest.mark.parametrize("name", ["sania", "adahessian"])
def test_fp16_loss_scaling_is_refused(name, tmp_path):
    trainer = OptfitTrainer(model=Regressor(), args=_args(tmp_path), train_dataset=Pairs(), optimizer_name=name)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu")  # what fp16 on a GPU sets up
    with pytest.raises(RuntimeError, match="bf16"):
        trainer.train()


def test_optimizer_name_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown optimizer"):
        OptfitTrainer(model=Regressor(), args=_args(tmp_path), optimizer_name="adamq")
    with pytest.raises(TypeError, match="not both"):
        model = Regressor()
        OptfitTrainer(model=model, args=_args(tmp_path), optimizer_name="adamw",
                      optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(TypeError, match="without optimizer_name"):
        OptfitTrainer(model=Regressor(), args=_args(tmp_path), optimizer_kwargs={"lr": 0.1})
    trainer = OptfitTrainer(model=Regressor(), args=_args(tmp_path, learning_rate=3e-4), train_dataset=Pairs(),
                            optimizer_name="adamw")
    with pytest.warns(UserWarning, match="learning_rate=0.0003"):
        trainer.train()
    assert unwrap(trainer.optimizer).defaults["lr"] == optfit.optimizer_info("adamw").defaults["lr"]


@pytest.mark.parametrize("name", ["celo-adam"])
def test_celo_plans_for_the_run_length(name, tmp_path):
    trainer = OptfitTrainer(model=Regressor(), args=_args(tmp_path, max_steps=4), train_dataset=Pairs(),
                            optimizer_name=name)
    trainer.train()
    assert unwrap(trainer.optimizer).total_steps == 4


def test_an_optimizer_that_needs_the_batch_is_refused_with_the_reason(tmp_path):
    trainer = OptfitTrainer(model=Regressor(), args=_args(tmp_path), train_dataset=Pairs(),
                            optimizer_name="universal-mm")
    with pytest.raises(TypeError, match="universal-mm needs the batch"):
        trainer.create_optimizer()
