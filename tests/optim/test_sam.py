"""SAM, ASAM and GSAM: the perturbation (global norm, per-group ρ, ASAM's T = |θ| + η), GSAM's decomposition and ρ
schedule, float64 trajectories against pytorch_optimizer and against an independent loop, and the wrapper contract
(shared param groups, bases by name or class, state_dict, non-finite policy)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import optfit
from optfit.optim import ASAM, GSAM, SAM, AdamW

from .problems import Smooth, TinyNet, run


def closure_of(model, opt, record=None):
    def closure():
        if record is not None:
            record.append([p.detach().clone() for p in model.ps])
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss
    return closure


def gradients(model, at=None):
    """∇f at ``at`` (default: the current parameters), without touching the model."""
    twin = copy.deepcopy(model)
    if at is not None:
        with torch.no_grad():
            for p, a in zip(twin.ps, at):
                p.copy_(a)
    return list(torch.autograd.grad(twin(), list(twin.ps)))


def global_norm(ts):
    return torch.sqrt(sum((t**2).sum() for t in ts))


# ------------------------------------------------------------------------------------------ the perturbation
def test_perturbation_is_rho_g_over_the_global_norm_with_per_group_rho():
    """ε = ρ_group · g/‖g‖, the norm over every parameter of both groups (not per group)."""
    model = Smooth()
    ps = list(model.ps)
    opt = SAM([{"params": ps[:2]}, {"params": ps[2:], "rho": 0.3}], base="sgd", rho=0.1, lr=0.0)
    theta, g = [p.detach().clone() for p in ps], gradients(model)
    record = []
    opt.step(closure_of(model, opt, record))
    norm = global_norm(g)
    for i, (p0, gi, seen) in enumerate(zip(theta, g, record[1])):
        rho = 0.1 if i < 2 else 0.3
        torch.testing.assert_close(seen, p0 + rho * gi / (norm + 1e-12), rtol=1e-14, atol=1e-15)
    assert all(torch.equal(p, t) for p, t in zip(ps, theta)), "θ must be restored exactly (lr = 0)"


def test_asam_scales_the_perturbation_by_abs_theta_plus_eta():
    """ASAM: ε = ρ T²g/‖Tg‖, T = |θ| + η elementwise; a group with adaptive=False keeps T = 1."""
    model = Smooth(1)
    ps = list(model.ps)
    opt = ASAM([{"params": ps[:2]}, {"params": ps[2:], "adaptive": False}], base="sgd", rho=0.5, eta=0.02,
               lr=0.0)
    theta, g = [p.detach().clone() for p in ps], gradients(model)
    T = [p.abs() + 0.02 for p in theta[:2]] + [torch.ones_like(theta[2])]
    norm = global_norm([t * gi for t, gi in zip(T, g)])
    record = []
    opt.step(closure_of(model, opt, record))
    for p0, t, gi, seen in zip(theta, T, g, record[1]):
        torch.testing.assert_close(seen, p0 + 0.5 * t * t * gi / (norm + 1e-12), rtol=1e-14, atol=1e-15)


def test_zero_gradient_gives_no_perturbation():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = SAM([x], base="sgd", lr=0.1)
    record = []

    def closure():
        record.append(x.detach().clone())
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.equal(record[1], torch.zeros(3, dtype=torch.float64)) and torch.equal(x, record[1])


# --------------------------------------------------------------------------------- an independent loop
def _reference_sam(model, steps, rho, lr, momentum, alpha=None):
    """SAM / GSAM written out by hand, with torch.optim.SGD stepping on the (decomposed) perturbed gradient."""
    ps = list(model.ps)
    base = torch.optim.SGD(ps, lr=lr, momentum=momentum)
    path = []
    for _ in range(steps):
        theta = [p.detach().clone() for p in ps]
        g = gradients(model)
        norm = global_norm(g)
        gp = gradients(model, [t + rho * gi / (norm + 1e-12) for t, gi in zip(theta, g)])
        if alpha is not None:
            pnorm = global_norm(gp)
            u = [x / (pnorm + 1e-12) for x in gp]
            proj = sum((gi * ui).sum() for gi, ui in zip(g, u))
            gp = [x - alpha * (gi - proj * ui) for x, gi, ui in zip(gp, g, u)]
        for p, x in zip(ps, gp):
            p.grad = x
        base.step()
        path.append([p.detach().clone() for p in ps])
    return path


@pytest.mark.parametrize("cls, extra", [(SAM, {}), (GSAM, {"alpha": 0.3})], ids=["sam", "gsam"])
def test_matches_an_independent_loop_in_float64(cls, extra):
    steps, rho, lr, momentum = 60, 0.07, 0.05, 0.9
    expected = _reference_sam(Smooth(2), steps, rho, lr, momentum, extra.get("alpha"))
    model = Smooth(2)
    opt = cls(model.parameters(), base=torch.optim.SGD, rho=rho, lr=lr, momentum=momentum, **extra)
    closure = closure_of(model, opt)
    for t in range(steps):
        opt.step(closure)
        for p, q in zip(model.ps, expected[t]):
            torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-13, msg=f"step {t + 1}")


# ---------------------------------------------------------------------------------- pytorch_optimizer
SETTINGS = [
    ("defaults", {}, [{}]),
    ("sgd-momentum", {"base": torch.optim.SGD, "rho": 0.1, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4}, [{}]),
    ("two-groups", {"rho": 0.2, "lr": 0.01, "weight_decay": 0.1}, [{}, {"lr": 0.003}]),
]


def _groups(model, group_extras):
    ps = list(model.ps)
    if len(group_extras) == 1:
        return [{"params": ps, **group_extras[0]}]
    return [{"params": ps[:2], **group_extras[0]}, {"params": ps[2:], **group_extras[1]}]


def _split(kwargs):
    """(base class for pytorch_optimizer, wrapper kwargs, base kwargs) of one setting, optfit's defaults filled in."""
    kwargs = dict(kwargs)
    base = kwargs.pop("base", AdamW)
    own = {k: kwargs.pop(k) for k in ("rho", "alpha", "eta") if k in kwargs}
    return base, own, kwargs


@pytest.fixture
def float64_reference_norm(monkeypatch):
    """pytorch_optimizer computes ‖g‖ in float32 whatever the dtype (its one departure here): with that, the float64
    trajectories part at ~1e-7 (up to 1e-5 after 60 chaotic steps); with the norm in the gradients' dtype they agree
    to ~1e-12, which is what these tests check."""
    po_sam = pytest.importorskip("pytorch_optimizer.optimizer.sam")

    def squared_global_norm(param_groups, device=None, *, weight_adaptive=False):
        grads = [p.grad * p.abs() if weight_adaptive and group.get("adaptive", False) else p.grad
                 for group in param_groups for p in group["params"] if p.grad is not None]
        return torch.stack([g.norm() for g in grads]).square().sum().reshape(1)

    monkeypatch.setattr(po_sam, "get_global_gradient_norm", squared_global_norm)


@pytest.mark.usefixtures("float64_reference_norm")
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("setting, kwargs, group_extras", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_sam_and_asam_match_pytorch_optimizer_in_float64(adaptive, setting, kwargs, group_extras):
    """pytorch_optimizer's SAM(adaptive=True) is ASAM with η = 0 (60 steps, every step's parameters)."""
    po = pytest.importorskip("pytorch_optimizer")
    base, own, base_kw = _split(kwargs)
    rho = own.get("rho", 0.5 if adaptive else 0.05)
    ours_model, theirs_model = Smooth(3), Smooth(3)
    if adaptive:
        ours = ASAM(_groups(ours_model, group_extras), base=base, rho=rho, eta=0.0, **base_kw)
    else:
        ours = SAM(_groups(ours_model, group_extras), base=base, rho=rho, **base_kw)
    theirs = po.SAM(_groups(theirs_model, group_extras), base, rho=rho, adaptive=adaptive, **base_kw)
    ours_closure, theirs_closure = closure_of(ours_model, ours), closure_of(theirs_model, theirs)
    for t in range(60):
        ours.step(ours_closure)
        theirs_closure()
        theirs.step(theirs_closure)
        for p, q in zip(ours_model.ps, theirs_model.ps):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12, msg=f"step {t + 1}")


GSAM_SETTINGS = [
    ("defaults", {}, None),
    ("sgd-momentum", {"base": torch.optim.SGD, "rho": 0.1, "alpha": 0.1, "lr": 0.02, "momentum": 0.9}, None),
    ("rho-follows-lr", {"rho": 0.2, "alpha": 0.6, "lr": 0.01}, 0.02),
]


@pytest.mark.usefixtures("float64_reference_norm")
@pytest.mark.parametrize("setting, kwargs, rho_min", GSAM_SETTINGS, ids=[s[0] for s in GSAM_SETTINGS])
def test_gsam_matches_pytorch_optimizer_in_float64(setting, kwargs, rho_min):
    """pytorch_optimizer's GSAM with its ProportionScheduler: constant ρ, or ρ_t ∝ lr under a linear decay."""
    po = pytest.importorskip("pytorch_optimizer")
    from pytorch_optimizer.lr_scheduler.proportion import ProportionScheduler

    base, own, base_kw = _split(kwargs)
    rho, alpha = own.get("rho", 0.05), own.get("alpha", 0.4)
    lr = base_kw.get("lr", 1e-3)
    ours_model, theirs_model = Smooth(4), Smooth(4)
    ours = GSAM(ours_model.parameters(), base=base, rho=rho, alpha=alpha, rho_min=rho_min, **base_kw)
    theirs_base = base(theirs_model.parameters(), **base_kw)
    decay = (lambda t: 1.0 - t / 80) if rho_min is not None else (lambda t: 1.0)
    ours_sched = torch.optim.lr_scheduler.LambdaLR(ours, decay)
    theirs_sched = torch.optim.lr_scheduler.LambdaLR(theirs_base, decay)
    rho_sched = ProportionScheduler(theirs_sched, max_lr=lr, min_lr=0.0, max_value=rho,
                                    min_value=rho if rho_min is None else rho_min)
    theirs = po.GSAM(theirs_model.parameters(), theirs_base, theirs_model, rho_sched, alpha=alpha)

    def theirs_closure():
        theirs_base.zero_grad()
        with torch.enable_grad():
            loss = theirs_model()
            loss.backward()
        return None, loss.detach()

    ours_closure = closure_of(ours_model, ours)
    for t in range(60):
        ours.step(ours_closure)
        theirs.step(theirs_closure)
        ours_sched.step()
        theirs_sched.step()
        theirs.update_rho_t()
        for p, q in zip(ours_model.ps, theirs_model.ps):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12, msg=f"step {t + 1}")


# ------------------------------------------------------------------------------------------------- GSAM
def test_gsam_hands_the_base_g_p_minus_alpha_times_the_orthogonal_part():
    """One GSAM step with SGD(lr=1): Δθ = −(g_p − α g_⊥), g_⊥ = g − ⟨g, u⟩u ⊥ g_p; α = 0 is SAM exactly."""
    model = Smooth(5)
    theta, g = [p.detach().clone() for p in model.ps], gradients(model)
    norm = global_norm(g)
    gp = gradients(model, [t + 0.1 * gi / (norm + 1e-12) for t, gi in zip(theta, g)])
    u = [x / global_norm(gp) for x in gp]
    proj = sum((gi * ui).sum() for gi, ui in zip(g, u))
    vertical = [gi - proj * ui for gi, ui in zip(g, u)]
    assert abs(float(sum((v * x).sum() for v, x in zip(vertical, gp)))) < 1e-12
    for alpha in (0.0, 0.5):
        m = copy.deepcopy(model)
        opt = GSAM(m.parameters(), base="sgd", rho=0.1, alpha=alpha, lr=1.0)
        opt.step(closure_of(m, opt))
        for p, t0, x, v in zip(m.ps, theta, gp, vertical):
            torch.testing.assert_close(p.detach(), t0 - (x - alpha * v), rtol=1e-12, atol=1e-12)
        for p, x in zip(m.ps, gp):  # the closure's gradient is left in p.grad, not the decomposed one
            torch.testing.assert_close(p.grad, x, rtol=1e-12, atol=1e-14)


def test_gsam_rho_is_proportional_to_the_learning_rate():
    """ρ_t = ρ_min + (ρ − ρ_min)(η_t − η_min)/(η_max − η_min), η_max = the lr the group was built with."""
    model = Smooth(6)
    opt = GSAM(model.parameters(), base="sgd", rho=0.3, rho_min=0.1, lr_min=0.01, lr=0.05)
    for lr in (0.05, 0.03, 0.01):
        opt.param_groups[0]["lr"] = lr
        record = []
        g = gradients(model)
        opt.step(closure_of(model, opt, record))
        step = global_norm([b - a for a, b in zip(record[0], record[1])])
        expected = 0.1 + 0.2 * (lr - 0.01) / 0.04
        assert float(step) == pytest.approx(expected * float(global_norm(g)) / (float(global_norm(g)) + 1e-12),
                                            rel=1e-12)


# ------------------------------------------------------------------------------------- the wrapper contract
def test_create_optimizer_with_another_base_shares_its_groups():
    model = TinyNet()
    opt = optfit.create_optimizer(model, "sam", base="sgd", lr=0.1, rho=0.05)
    assert type(opt.base_optimizer) is optfit.optim.SGD
    assert opt.param_groups is opt.base_optimizer.param_groups and opt.state is opt.base_optimizer.state
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1] and all(g["sam_rho"] == 0.05 for g in opt.param_groups)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run(model, opt, 1)
    sched.step()
    assert [g["lr"] for g in opt.base_optimizer.param_groups] == [0.05, 0.05]
    extra = nn.Parameter(torch.zeros(2))
    opt.add_param_group({"params": [extra], "rho": 0.0})
    assert opt.param_groups[-1]["sam_rho"] == 0.0 and "rho" not in opt.param_groups[-1]


def test_a_group_key_the_base_uses_itself_stays_the_bases():
    """torch's Adadelta has its own ``rho``: in a param group it is Adadelta's, SAM's per-group ρ is ``sam_rho``."""
    ps = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))]
    opt = SAM([{"params": ps[:1], "rho": 0.5}, {"params": ps[1:], "sam_rho": 0.2}], base=torch.optim.Adadelta)
    assert [g["rho"] for g in opt.param_groups] == [0.5, 0.9]
    assert [g["sam_rho"] for g in opt.param_groups] == [0.05, 0.2]


def test_a_torch_class_and_a_preset_name_are_bases_too():
    opt = SAM(TinyNet().parameters(), base=torch.optim.Adam, lr=0.01)
    assert type(opt.base_optimizer) is torch.optim.Adam
    opt = SAM(TinyNet().parameters(), base="cadamw")
    assert opt.param_groups[0]["cautious"] is True
    with pytest.raises(TypeError, match="fixes cautious"):
        SAM(TinyNet().parameters(), base="cadamw", cautious=False)


@pytest.mark.parametrize("base, what", [("sania", "closure"), ("adahessian", "create_graph"), ("gsam", "closure")])
def test_bases_that_need_a_closure_or_a_graph_are_refused(base, what):
    with pytest.raises(ValueError, match=f"Invalid base.*{what}"):
        SAM(TinyNet().parameters(), base=base)


def test_step_without_closure_raises():
    opt = SAM(TinyNet().parameters())
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


def test_invalid_wrapper_hyperparameters_name_themselves():
    for cls, kwargs, name in [(SAM, {"rho": -1.0}, "rho"), (SAM, {"eta": -0.1}, "eta"),
                              (SAM, {"adaptive": 1}, "adaptive"),
                              (GSAM, {"alpha": 1.5}, "alpha"), (GSAM, {"rho_min": -1.0}, "rho_min")]:
        with pytest.raises(ValueError, match=name):
            cls(TinyNet().parameters(), **kwargs)


@pytest.mark.parametrize("cls", [SAM, GSAM])
def test_state_dict_round_trip_is_bit_exact_through_torch_save(cls):
    model = TinyNet()
    opt = cls(model.parameters(), base="adamw", lr=0.01)
    run(model, opt, 4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin = TinyNet()
    twin.load_state_dict(model.state_dict())
    opt2 = cls(twin.parameters(), base="adamw", lr=0.5)  # the lr comes back from the state dict
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups is opt2.base_optimizer.param_groups
    run(model, opt, 4)
    run(twin, opt2, 4)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="base optimizer is AdamW"):
        cls(TinyNet().parameters(), base="sgd").load_state_dict(opt.state_dict())


def test_nonfinite_gradient_at_the_perturbed_point_follows_the_base_policy():
    """A NaN appearing only at θ + ε: "raise" names it after θ is restored; "skip" skips the step."""
    for policy in ("raise", "skip"):
        model = TinyNet()
        opt = SAM(model.parameters(), base="adamw", nonfinite=policy)
        run(model, opt, 2)
        before = copy.deepcopy(model.state_dict())
        calls = []

        def closure():
            opt.zero_grad()
            loss = model()
            loss.backward()
            calls.append(1)
            if len(calls) == 2:
                model.net[0].bias.grad[0] = float("nan")
            return loss

        if policy == "raise":
            with pytest.raises(FloatingPointError, match="non-finite gradient"):
                opt.step(closure)
        else:
            opt.step(closure)
            assert opt.skipped_steps == 1
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


def test_create_optimizer_passes_the_bases_own_hyperparameters():
    """The factory accepts what the named base accepts (SGD's momentum) and still rejects what neither takes."""
    model = torch.nn.Linear(3, 2)
    opt = optfit.create_optimizer(model, "sam", base="sgd", lr=0.1, rho=0.05, momentum=0.9)
    assert opt.param_groups[0]["momentum"] == 0.9
    assert optfit.create_optimizer(model, "lookahead", base="sgd", momentum=0.5).param_groups[0]["momentum"] == 0.5
    with pytest.raises(TypeError, match="nesterov_typo"):
        optfit.create_optimizer(model, "sam", base="sgd", nesterov_typo=True)
