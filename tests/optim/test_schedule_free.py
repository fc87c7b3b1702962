"""Schedule-Free SGD / AdamW / RAdam: parity with the authors' ``schedulefree`` package, a three-sequence oracle,
the train/eval swap, resume across a swap, the group clock and the BatchNorm helper."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import optfit
from optfit.optim import AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree
from optfit.optim.schedule_free import recompute_bn_statistics

F64 = torch.float64
SHAPES = [(4, 3), (5,), (2, 2, 2)]
OURS = {"sgd": SGDScheduleFree, "adamw": AdamWScheduleFree, "radam": RAdamScheduleFree}


# ------------------------------------------------------------------------------------------------ problem
class Problem:
    """f = Σ ½a(p − t)² + 0.01 p⁴ per tensor, plus a seeded noise stream: gradients depend on the point (y)."""

    def __init__(self, shapes=SHAPES, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.targets = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
        self.curv = [torch.rand(s, generator=gen, dtype=F64) + 0.1 for s in shapes]
        self.init = [torch.randn(s, generator=gen, dtype=F64) for s in shapes]
        self.seed = seed

    def params(self):
        return [x.clone().requires_grad_() for x in self.init]

    def stream(self):
        return torch.Generator().manual_seed(self.seed + 100)

    def grads(self, params, gen):
        with torch.enable_grad():
            loss = sum((0.5 * a * (p - t) ** 2 + 0.01 * p**4).sum() for p, a, t in zip(params, self.curv, self.targets))
            grads = torch.autograd.grad(loss, params)
        return [g + 0.3 * torch.randn(g.shape, generator=gen, dtype=F64) for g in grads]


def _no_grad(step, index):
    """Some parameters miss their gradient on some steps (they must be skipped, the clock still runs)."""
    return (index == 1 and step % 7 == 3) or (index == 2 and step % 5 == 1)


def _close(a, b, rtol=1e-10, atol=1e-12, msg=""):
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=rtol, atol=atol, msg=lambda m: f"{msg} param {i}: {m}")


def _drive(problem, pairs, steps, eval_at=(), skip_grads=False, rtol=1e-10):
    """Step every (optimizer, params) pair on the same problem; compare all parameters after every step, and
    the eval-mode x at ``eval_at`` and at the end."""
    gens = [problem.stream() for _ in pairs]
    (_, first), rest = pairs[0], pairs[1:]
    for t in range(steps):
        for (opt, params), gen in zip(pairs, gens):
            grads = problem.grads(params, gen)
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if skip_grads and _no_grad(t, i) else g
            opt.step()
        for _, params in rest:
            _close(params, first, rtol=rtol, msg=f"step {t + 1}")
        if t + 1 in eval_at or t + 1 == steps:
            for opt, _ in pairs:
                opt.eval()
            for _, params in rest:
                _close(params, first, rtol=rtol, msg=f"x after step {t + 1}")
            if t + 1 < steps:
                for opt, _ in pairs:
                    opt.train()


def _theirs(cls, params, kwargs, groups):
    opt = cls(groups(params) if groups else params, **kwargs)
    opt.train()  # the package starts in eval mode
    return opt


# --------------------------------------------------------------------------------- parity with the package
def _two_groups_sgd(params):
    return [{"params": params[:2], "lr": 0.5, "r": 1.0, "weight_lr_power": 1.0},
            {"params": params[2:], "momentum": 0.7, "weight_decay": 0.02}]


def _two_groups_adam(params):
    return [{"params": params[:1], "betas": (0.7, 0.95), "r": 0.5},
            {"params": params[1:], "lr": 0.02, "weight_decay": 0.1, "weight_lr_power": 0.0}]


CASES = [
    ("sgd", "SGDScheduleFree", {}, None),
    ("sgd", "SGDScheduleFree", {"lr": 0.3, "momentum": 0.8, "weight_decay": 0.05, "warmup_steps": 10}, None),
    ("sgd", "SGDScheduleFree", {"lr": 0.2, "warmup_steps": 5}, _two_groups_sgd),
    ("adamw", "AdamWScheduleFree", {}, None),
    ("adamw", "AdamWScheduleFree", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1,
                                    "warmup_steps": 15}, None),
    ("adamw", "AdamWScheduleFree", {"lr": 0.05, "warmup_steps": 4, "r": 1.0}, _two_groups_adam),
    ("radam", "RAdamScheduleFree", {}, None),
    ("radam", "RAdamScheduleFree", {"lr": 0.01, "betas": (0.95, 0.99), "weight_decay": 0.05,
                                    "silent_sgd_phase": False}, None),
    ("radam", "RAdamScheduleFree", {"lr": 0.05, "r": 2.0, "weight_lr_power": 1.0}, _two_groups_adam),
]


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("kind, theirs_name, kwargs, groups", CASES,
                         ids=[f"{c[0]}-{i % 3}" for i, c in enumerate(CASES)])
def test_matches_schedulefree_package_step_by_step(kind, theirs_name, kwargs, groups, impl):
    sf = pytest.importorskip("schedulefree")
    problem = Problem(seed=len(kwargs))
    ours_p, theirs_p = problem.params(), problem.params()
    ours = OURS[kind](groups(ours_p) if groups else ours_p, impl=impl, **kwargs)
    theirs = _theirs(getattr(sf, theirs_name), theirs_p, kwargs, groups)
    _drive(problem, [(theirs, theirs_p), (ours, ours_p)], 60, eval_at=(7, 20, 41), skip_grads=groups is not None)
    for ga, gb in zip(ours.param_groups, theirs.param_groups):  # the clock agrees too
        assert (ga["k"], ga["lr_max"], ga["scheduled_lr"]) == (gb["k"], gb["lr_max"], gb["scheduled_lr"])
        assert ga["weight_sum"] == pytest.approx(gb["weight_sum"], rel=1e-15)


@pytest.mark.parametrize("kwargs", [{}, {"lr": 0.02, "warmup_steps": 10, "weight_decay": 0.1, "betas": (0.8, 0.99)}])
def test_lr_bias_correction_matches_the_papers_algorithm(kwargs):
    sf = pytest.importorskip("schedulefree")
    problem = Problem(seed=3)
    ours_p, theirs_p = problem.params(), problem.params()
    ours = AdamWScheduleFree(ours_p, lr_bias_correction=True, **kwargs)
    theirs = _theirs(sf.AdamWScheduleFreePaper, theirs_p, kwargs, None)
    _drive(problem, [(theirs, theirs_p), (ours, ours_p)], 50, eval_at=(25,))


@pytest.mark.parametrize("kind, theirs_name, kwargs", [
    ("sgd", "SGDScheduleFreeReference", {"lr": 0.5}),
    ("sgd", "SGDScheduleFreeReference", {"lr": 0.3, "momentum": 0.6, "weight_decay": 0.05, "warmup_steps": 8}),
    ("adamw", "AdamWScheduleFreeReference", {}),
    ("adamw", "AdamWScheduleFreeReference", {"lr": 0.02, "weight_decay": 0.1, "warmup_steps": 6, "r": 1.0}),
])
def test_x_after_every_step_matches_the_packages_three_sequence_reference(kind, theirs_name, kwargs, capsys):
    """The package's *Reference classes store x, y and z explicitly: x after every step, via eval()/train()."""
    sf = pytest.importorskip("schedulefree")
    problem = Problem(seed=5)
    ours_p, theirs_p = problem.params(), problem.params()
    ours = OURS[kind](ours_p, **kwargs)
    theirs = _theirs(getattr(sf, theirs_name), theirs_p, kwargs, None)
    _drive(problem, [(theirs, theirs_p), (ours, ours_p)], 50, eval_at=range(1, 51))


# ----------------------------------------------------------------------------------------------- oracles
def _three_sequences(problem, steps, lr, beta, wd=0.0, warmup=0, r=0.0, power=2.0, adam=None):
    """The paper's recurrences with x, y and z kept explicitly (no elimination of x); adam = (β₂, ε)."""
    z = [p.clone() for p in problem.init]
    x = [p.clone() for p in problem.init]
    v = [torch.zeros_like(p) for p in z]
    gen, lr_max, weight_sum, ys, xs = problem.stream(), -1.0, 0.0, [], []
    for t in range(1, steps + 1):
        y = [(1 - beta) * zi + beta * xi for zi, xi in zip(z, x)]
        grads = problem.grads([yi.clone().requires_grad_() for yi in y], gen)
        gamma = lr * min(1.0, t / warmup) if warmup else lr
        lr_max = max(lr_max, gamma)
        weight = t**r * lr_max**power
        weight_sum += weight
        c = weight / weight_sum
        for i, g in enumerate(grads):
            d = g
            if adam:
                b2, eps = adam
                v[i] = b2 * v[i] + (1 - b2) * g * g
                d = g / ((v[i] / (1 - b2**t)).sqrt() + eps)
            z[i] = z[i] - gamma * (d + wd * y[i])
            x[i] = (1 - c) * x[i] + c * z[i]
        ys.append([(1 - beta) * zi + beta * xi for zi, xi in zip(z, x)])
        xs.append([xi.clone() for xi in x])
    return ys, xs


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("kind, kwargs", [
    ("sgd", {"lr": 0.4, "momentum": 0.9}),
    ("sgd", {"lr": 0.3, "momentum": 0.75, "weight_decay": 0.1, "warmup_steps": 12, "r": 0.5, "weight_lr_power": 1.0}),
    ("adamw", {"lr": 0.03, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.05, "warmup_steps": 5}),
])
def test_matches_the_explicit_three_sequence_recurrences(kind, kwargs, impl):
    problem = Problem(seed=11)
    params = problem.params()
    opt = OURS[kind](params, impl=impl, **kwargs)
    beta = kwargs.get("momentum", kwargs.get("betas", (0.9,))[0])
    adam = (kwargs["betas"][1], kwargs["eps"]) if kind == "adamw" else None
    ys, xs = _three_sequences(problem, 50, kwargs["lr"], beta, kwargs.get("weight_decay", 0.0),
                              kwargs.get("warmup_steps", 0), kwargs.get("r", 0.0), kwargs.get("weight_lr_power", 2.0),
                              adam)
    gen = problem.stream()
    for t in range(50):
        for p, g in zip(params, problem.grads(params, gen)):
            p.grad = g
        opt.step()
        _close(params, ys[t], rtol=1e-9, atol=1e-11, msg=f"y at step {t + 1}")
        opt.eval()
        _close(params, xs[t], rtol=1e-9, atol=1e-11, msg=f"x at step {t + 1}")
        opt.train()


def test_first_two_steps_by_hand():
    """AdamW: step 1 has c = 1, so x = y = z = p − γ g/(|g| + ε); step 2 averages with c = ½."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    opt = AdamWScheduleFree([p], lr=lr, betas=(b1, b2), eps=eps)
    g1, g2 = torch.tensor([0.3, -4.0, 0.0], dtype=F64), torch.tensor([1.0, 2.0, -1.0], dtype=F64)
    p0 = p.detach().clone()
    p.grad = g1.clone()
    opt.step()
    z1 = p0 - lr * g1 / (g1.abs() + eps)
    assert torch.equal(p.detach(), z1) and torch.equal(opt.state[p]["z"], z1)
    p.grad = g2.clone()
    opt.step()
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    z2 = z1 - lr * g2 / ((v2 / (1 - b2**2)).sqrt() + eps)
    x2 = 0.5 * z1 + 0.5 * z2
    torch.testing.assert_close(p.detach(), (1 - b1) * z2 + b1 * x2, rtol=1e-15, atol=1e-15)
    opt.eval()
    torch.testing.assert_close(p.detach(), x2, rtol=1e-15, atol=1e-15)
    assert opt.param_groups[0]["k"] == 2 and opt.param_groups[0]["weight_sum"] == 2 * lr**2


def test_sgd_warmup_and_weights_by_hand():
    opt = SGDScheduleFree([torch.zeros(2, requires_grad=True)], lr=0.6, warmup_steps=3, r=1.0, weight_lr_power=2.0)
    p = opt.param_groups[0]["params"][0]
    seen = []
    for _ in range(5):
        p.grad = torch.ones(2)
        opt.step()
        g = opt.param_groups[0]
        seen.append((g["scheduled_lr"], g["lr_max"], g["weight_sum"]))
    lrs = [0.2, 0.4, 0.6, 0.6, 0.6]
    sums = [sum((i + 1) * lrs[i] ** 2 for i in range(t + 1)) for t in range(5)]
    for (lr, lr_max, ws), want_lr, want_sum in zip(seen, lrs, sums):
        assert lr == pytest.approx(want_lr, rel=1e-15) and lr_max == pytest.approx(want_lr, rel=1e-15)
        assert ws == pytest.approx(want_sum, rel=1e-14)


def test_radam_silent_phase_moves_nothing_but_accumulates_v():
    p = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    opt = RAdamScheduleFree([p])
    for t in range(1, 7):
        p.grad = torch.tensor([0.5, -1.0], dtype=F64)
        before = p.detach().clone()
        opt.step()
        rho, _ = RAdamScheduleFree.rho(t, 0.999)
        assert torch.equal(p.detach(), before) == (rho <= 4.0), t
    assert opt.state[p]["exp_avg_sq"].abs().sum() > 0


# ------------------------------------------------------------------------------------------ train / eval
def _trained(kind="adamw", steps=12, dtype=F64, **kw):
    problem = Problem(seed=2)
    params = [p.detach().to(dtype).requires_grad_() for p in problem.params()]
    opt = OURS[kind](params, **{"lr": 0.05, **kw})
    gen = problem.stream()
    for _ in range(steps):
        grads = problem.grads([p.detach().double().requires_grad_() for p in params], gen)
        for p, g in zip(params, grads):
            p.grad = g.to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("kind", sorted(OURS))
@pytest.mark.parametrize("dtype, state_dtype", [(F64, None), (torch.float32, None), (torch.bfloat16, None),
                                                (torch.bfloat16, "float32")])
def test_eval_train_round_trip_is_bit_exact(kind, dtype, state_dtype):
    params, opt = _trained(kind, steps=9, dtype=dtype, state_dtype=state_dtype)
    y = [p.detach().clone() for p in params]
    for _ in range(3):
        opt.eval()
        opt.eval()  # idempotent
        assert any(not torch.equal(p, q) for p, q in zip(params, y))
        opt.train()
        opt.train()
        assert all(torch.equal(p, q) for p, q in zip(params, y))
    assert all("y" not in opt.state[p] for p in params)


def test_eval_gives_the_average_as_the_package_computes_it():
    params, opt = _trained("sgd", momentum=0.8)
    want = [p.detach().clone().lerp_(opt.state[p]["z"], 1 - 1 / 0.8) for p in params]
    opt.eval()
    assert all(torch.equal(p, w) for p, w in zip(params, want))
    for p in params:  # and it is the x of y = (1 − β)z + βx
        torch.testing.assert_close(opt.state[p]["y"], 0.2 * opt.state[p]["z"] + 0.8 * p.detach(),
                                   rtol=1e-14, atol=1e-14)


def test_complex_parameters_swap_like_their_real_view():
    z = torch.randn(3, 2, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)).requires_grad_()
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opts = [AdamWScheduleFree([z], lr=0.1), AdamWScheduleFree([r], lr=0.1)]
    for _ in range(4):
        z.grad = (2 * z).detach()
        r.grad = (2 * r).detach()
        for o in opts:
            o.step()
    y = z.detach().clone()
    for o in opts:
        o.eval()
    assert not torch.equal(z.detach(), y)
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-14, atol=1e-14)
    opts[0].train()
    assert torch.equal(z.detach(), y)


def test_parameters_changed_in_eval_mode_fall_back_to_the_packages_formula():
    params, opt = _trained("adamw")
    opt.eval()
    with torch.no_grad():
        params[0].mul_(0.5)
    x0 = params[0].detach().clone()
    untouched = params[1].detach().clone()
    opt.train()
    torch.testing.assert_close(params[0].detach(), x0.lerp(opt.state[params[0]]["z"], 1 - 0.9), rtol=0, atol=0)
    assert not torch.equal(params[1].detach(), untouched)  # restored to y from the kept copy


def test_step_in_eval_mode_raises_before_the_closure_and_touches_nothing():
    params, opt = _trained("sgd")
    opt.eval()
    before, state = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    called = []
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step(lambda: called.append(1))
    assert not called and all(torch.equal(p, b) for p, b in zip(params, before))
    assert opt.state_dict()["param_groups"] == state["param_groups"]
    opt.train()
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


def test_state_dict_records_the_mode_and_new_groups_join_it():
    params, opt = _trained("radam")
    assert [g["train_mode"] for g in opt.state_dict()["param_groups"]] == [True]
    opt.eval()
    sd = opt.state_dict()
    assert [g["train_mode"] for g in sd["param_groups"]] == [False]
    assert all("y" in s for s in sd["state"].values())
    opt.add_param_group({"params": [torch.zeros(2, dtype=F64, requires_grad=True)]})
    assert opt.param_groups[-1]["train_mode"] is False
    opt.train()
    assert all(g["train_mode"] for g in opt.param_groups)


def _fresh(kind, params_like, **kw):
    params = [p.detach().clone().requires_grad_() for p in params_like]
    return params, OURS[kind](params, **{"lr": 0.05, **kw})


@pytest.mark.parametrize("kind", sorted(OURS))
def test_resume_across_a_train_eval_switch_is_bit_exact(kind):
    """Checkpoint in eval mode (the package's advice): model weights = x, optimizer state with its mode and
    clock; a fresh process loads both, calls train() and continues exactly like the run that never stopped."""
    problem = Problem(seed=4)
    params, opt = _trained(kind, steps=10)
    opt.eval()
    weights = [p.detach().clone() for p in params]
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    gen = problem.stream()

    def cont(ps, o):
        o.train()
        for _ in range(6):
            for p, g in zip(ps, problem.grads(ps, gen)):
                p.grad = g
            o.step()
        o.eval()

    gen_state = gen.get_state()
    cont(params, opt)
    params2, opt2 = _fresh(kind, weights)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert not opt2.param_groups[0]["train_mode"]
    gen.set_state(gen_state)
    cont(params2, opt2)
    assert all(torch.equal(p, q) for p, q in zip(params, params2))
    for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
        assert opt.param_groups[0][key] == opt2.param_groups[0][key]


def test_resume_from_a_train_mode_checkpoint_then_eval():
    params, opt = _trained("sgd", steps=15)
    sd = copy.deepcopy(opt.state_dict())
    params2, opt2 = _fresh("sgd", params)
    opt2.load_state_dict(sd)
    opt.eval()
    opt2.eval()
    assert all(torch.equal(p, q) for p, q in zip(params, params2))


# ------------------------------------------------------------------------------------------ the group clock
def test_clock_counts_steps_per_group_not_per_parameter():
    a = torch.zeros(3, dtype=F64, requires_grad=True)
    b = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = SGDScheduleFree([{"params": [a]}, {"params": [b]}], lr=0.1)
    for t in range(4):
        a.grad = torch.ones(3, dtype=F64)
        b.grad = torch.ones(3, dtype=F64) if t >= 2 else None  # b's group has no gradient at first
        opt.step()
    assert [g["k"] for g in opt.param_groups] == [4, 4]  # as in the package
    assert opt.state[b]["step"].item() == 2.0


def test_a_skipped_nonfinite_step_leaves_the_clock_alone():
    params, opt = _trained("adamw", nonfinite="skip")
    clock = {k: opt.param_groups[0][k] for k in ("k", "weight_sum", "lr_max")}
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert opt.skipped_steps == 1
    assert clock == {k: opt.param_groups[0][k] for k in clock}


def test_a_group_with_lr_zero_stays_put_and_its_x_too():
    a = torch.randn(4, dtype=F64, requires_grad=True)
    b = torch.randn(4, dtype=F64, requires_grad=True)
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = AdamWScheduleFree([{"params": [a]}, {"params": [b], "lr": 0.0}], weight_decay=0.1)
    for _ in range(5):
        a.grad, b.grad = torch.ones(4, dtype=F64), torch.ones(4, dtype=F64)
        opt.step()
    opt.eval()
    assert torch.equal(b.detach(), b0) and not torch.equal(a.detach(), a0)


# --------------------------------------------------------------------------------- decay modes, fast paths
def test_coupled_decay_is_l2_on_the_gradient_before_the_second_moment():
    sf = pytest.importorskip("schedulefree")
    problem = Problem(seed=6)
    lam = 0.2
    ours_p, theirs_p = problem.params(), problem.params()
    ours = AdamWScheduleFree(ours_p, lr=0.02, weight_decay=lam, decay_mode="coupled")
    theirs = _theirs(sf.AdamWScheduleFree, theirs_p, {"lr": 0.02}, None)
    g_ours, g_theirs = problem.stream(), problem.stream()
    for t in range(50):
        for p, g in zip(ours_p, problem.grads(ours_p, g_ours)):
            p.grad = g
        for p, g in zip(theirs_p, problem.grads(theirs_p, g_theirs)):
            p.grad = g + lam * p.detach()
        ours.step()
        theirs.step()
        _close(ours_p, theirs_p, msg=f"step {t + 1}")


def test_independent_decay_is_decoupled_decay_divided_by_the_initial_lr():
    problem = Problem(seed=7)
    runs = []
    for mode, lam in (("independent", 0.01), ("decoupled", 0.01 / 0.05)):
        params = problem.params()
        opt = AdamWScheduleFree(params, lr=0.05, weight_decay=lam, decay_mode=mode)
        gen = problem.stream()
        for _ in range(30):
            for p, g in zip(params, problem.grads(params, gen)):
                p.grad = g
            opt.step()
        runs.append(params)
    _close(runs[0], runs[1], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(OURS))
@pytest.mark.parametrize("decay_mode", ["coupled", "decoupled", "independent"])
def test_foreach_matches_the_reference_kernel(kind, decay_mode):
    problem = Problem(seed=8)
    runs = []
    for impl in ("reference", "foreach"):
        params = problem.params()
        extra = {"silent_sgd_phase": False} if kind == "radam" else {"warmup_steps": 5}
        opt = OURS[kind](params, lr=0.05, weight_decay=0.1, decay_mode=decay_mode, impl=impl, **extra)
        gen = problem.stream()
        for t in range(50):
            for i, (p, g) in enumerate(zip(params, problem.grads(params, gen))):
                p.grad = None if _no_grad(t, i) else g
            opt.step()
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    _close(pa, pb, rtol=1e-13, atol=1e-14)
    for p, q in zip(pa, pb):
        for key in oa.state[p]:
            torch.testing.assert_close(oa.state[p][key], ob.state[q][key], rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kind, key, value", [
    ("sgd", "momentum", 0.0), ("sgd", "momentum", 1.0), ("sgd", "warmup_steps", -1), ("sgd", "warmup_steps", 2.5),
    ("sgd", "r", -1.0), ("sgd", "weight_lr_power", -0.5), ("sgd", "cautious", True),
    ("adamw", "betas", (0.0, 0.999)), ("adamw", "betas", (0.9, 1.0)), ("adamw", "eps", -1e-8),
    ("adamw", "lr_bias_correction", 1), ("adamw", "weight_decay", -0.1),
    ("radam", "silent_sgd_phase", "yes"), ("radam", "betas", (0.0, 0.99)),
])
def test_invalid_hyperparameters_name_the_argument(kind, key, value):
    with pytest.raises(ValueError, match=key):
        OURS[kind]([torch.zeros(2, requires_grad=True)], **{key: value})


def test_package_defaults_and_registry_records():
    assert SGDScheduleFree([torch.zeros(1)]).defaults["lr"] == 1.0
    for name, cls, n, betas in (("schedule-free-sgd", SGDScheduleFree, 1, False),
                                ("schedule-free-adamw", AdamWScheduleFree, 2, True),
                                ("schedule-free-radam", RAdamScheduleFree, 2, True)):
        info = optfit.optimizer_info(name)
        assert info.cls is cls and info.family == "learning-rate-free" and info.paper == "arXiv:2405.15682"
        assert info.state_tensors == n and info.has_betas is betas and info.has_momentum
        assert not info.supports_cautious
    d = optfit.optimizer_info("schedule-free-adamw").defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["warmup_steps"], d["r"], d["weight_lr_power"]) == \
        (0.0025, (0.9, 0.999), 1e-8, 0.0, 0, 0.0, 2.0)
    assert optfit.optimizer_info("schedule-free-radam").defaults["silent_sgd_phase"] is True


# -------------------------------------------------------------------------------------- BatchNorm helper
class _BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 6).double()
        self.bn = nn.BatchNorm1d(6).double()
        self.out = nn.Linear(6, 1).double()

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.lin(x))))


def test_recompute_bn_statistics_averages_over_the_batches_at_x():
    net = _BNNet()
    opt = SGDScheduleFree(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 4, generator=gen, dtype=F64), torch.randn(8, 1, generator=gen, dtype=F64))
            for _ in range(5)]
    for x, t in data * 3:
        opt.zero_grad()
        ((net(x) - t) ** 2).mean().backward()
        opt.step()
    net.eval()
    used = recompute_bn_statistics(net, opt, data)
    assert used == 5 and not opt.param_groups[0]["train_mode"] and not net.training and not net.bn.training
    with torch.no_grad():  # the parameters are x now: the statistics are those of lin's output at x
        acts = [net.lin(x) for x, _ in data]
    torch.testing.assert_close(net.bn.running_mean, torch.stack([a.mean(0) for a in acts]).mean(0))
    torch.testing.assert_close(net.bn.running_var, torch.stack([a.var(0) for a in acts]).mean(0))
    assert net.bn.momentum == 0.1 and int(net.bn.num_batches_tracked) == 5
    assert all(p.grad is None or not p.grad.requires_grad for p in net.parameters())
    net.train()
    assert recompute_bn_statistics(net, opt, (x for x, _ in data[:2])) == 2 and net.training  # bare tensors
    mean = net.bn.running_mean.clone()
    with pytest.raises(ValueError, match="empty"):
        recompute_bn_statistics(net, opt, [])
    assert torch.equal(net.bn.running_mean, mean)
    opt.train()
