"""DoG / L-DoG / PolyAverager: parity with the authors' package (dog-optimizer), float64, trajectory for trajectory,
plus hand-computed steps and the places where optfit deliberately differs (global norms, lr, missing grads)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from optfit.optim import DoG, LDoG, PolyAverager

STEPS = 60
SHAPES = [(4, 6), (6,), (6, 3), (3,)]  # W1, b1, W2, b2 of a small tanh regression


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    init = [0.5 * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    X = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    Y = torch.randn(16, 3, generator=gen, dtype=torch.float64)

    def loss(ps):
        w1, b1, w2, b2 = ps
        return ((torch.tanh(X @ w1 + b1) @ w2 + b2 - Y) ** 2).mean()

    return init, loss


def _params(init):
    return [t.clone().requires_grad_() for t in init]


def _grad(ps, loss):
    for p in ps:
        p.grad = None
    loss(ps).backward()


def _run_parity(ref_cls, ours_cls, ref_groups, our_groups, ref_kw, our_kw, eta_pairs, steps=STEPS):
    """Step both on the same problem; after every step compare all parameters and the step sizes.
    ``*_groups``: lists of parameter indices per group (the reference may get one group where optfit has two);
    ``eta_pairs(ref, ours)`` yields (reference η, optfit η) pairs to compare."""
    init, loss = _problem()
    ps_ref, ps_our = _params(init), _params(init)

    def groups(ps, spec):
        return [{"params": [ps[i] for i in idx], **extra} for idx, extra in spec]

    ref = ref_cls(groups(ps_ref, ref_groups), **ref_kw)
    ours = ours_cls(groups(ps_our, our_groups), **our_kw)
    for _ in range(steps):
        _grad(ps_ref, loss), _grad(ps_our, loss)
        ref.step(), ours.step()
        for a, b in zip(ps_ref, ps_our):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-10, atol=1e-13)
        for e_ref, e_our in eta_pairs(ref, ours):
            assert e_our == pytest.approx(float(e_ref), rel=1e-10, abs=0)
    moved = sum(float((a.detach() - b).norm()) for a, b in zip(ps_our, init))
    assert moved > 1e-2, "the trajectory must leave the start for the comparison to mean something"


ALL = list(range(len(SHAPES)))

DOG_SETTINGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"weight_decay": 0.05, "reps_rel": 1e-4}, id="wd-reps_rel"),
    pytest.param({"init_eta": 1e-3, "eps": 1e-6}, id="init_eta-eps"),
]


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("kw", DOG_SETTINGS)
def test_dog_matches_reference_package(kw, impl):
    dog = pytest.importorskip("dog")
    _run_parity(dog.DoG, DoG, [(ALL, {})], [(ALL, {})], kw, {**kw, "impl": impl},
                lambda ref, ours: [(ref.param_groups[0]["eta"][0], ours.eta)])


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_dog_two_groups_equal_the_package_with_one_group(impl):
    """DoG's norms span all groups (the paper's x is the whole model; the package's stay within a group), so
    two optfit groups with the same settings step exactly like one reference group holding every tensor."""
    dog = pytest.importorskip("dog")
    kw = {"weight_decay": 0.01, "reps_rel": 1e-5}
    _run_parity(dog.DoG, DoG, [(ALL, {})], [([0, 2], {}), ([1, 3], {})], kw, {**kw, "impl": impl},
                lambda ref, ours: [(ref.param_groups[0]["eta"][0], ours.eta)])


LDOG_SETTINGS = DOG_SETTINGS + [pytest.param({"lr": 0.5, "weight_decay": 0.02, "reps_rel": 1e-4}, id="lr-wd")]


def _ldog_etas(ref, ours):
    ref_etas = [e / g["lr"] for g in ref.param_groups for e in g["eta"]]
    return zip(ref_etas, [ours.state[p]["eta"] for g in ours.param_groups for p in g["params"]])


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("kw", LDOG_SETTINGS)
def test_ldog_matches_reference_package(kw, impl):
    dog = pytest.importorskip("dog")
    _run_parity(dog.LDoG, LDoG, [(ALL, {})], [(ALL, {})], kw, {**kw, "impl": impl}, _ldog_etas)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_ldog_two_groups_with_their_own_settings_match_reference(impl):
    dog = pytest.importorskip("dog")
    spec = [([0, 1], {}), ([2, 3], {"weight_decay": 0.1, "reps_rel": 1e-3})]
    _run_parity(dog.LDoG, LDoG, spec, spec, {}, {"impl": impl}, _ldog_etas)


# ------------------------------------------------------------------------------------------ by hand
def test_dog_first_two_steps_by_hand():
    x = torch.tensor([3.0, 0.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[4.0]], dtype=torch.float64, requires_grad=True)  # ‖x₀‖ = 5 over both tensors
    opt = DoG([x, y], reps_rel=1e-2, eps=1e-8)
    x.grad = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y.grad = torch.tensor([[2.0]], dtype=torch.float64)  # ‖g₀‖² = 9
    opt.step()
    eta0 = 1e-2 * (1 + 5) / math.sqrt(9 + 1e-8)
    assert opt.eta == pytest.approx(eta0, rel=1e-14)
    torch.testing.assert_close(x.detach(), torch.tensor([3.0 - eta0, -2 * eta0], dtype=torch.float64))
    torch.testing.assert_close(y.detach(), torch.tensor([[4.0 - 2 * eta0]], dtype=torch.float64))
    # step 2: ‖x₁ − x₀‖ = 3η₀ = 0.06/√(1+ε/9) < r_ε = 0.06, so r̄ stays r_ε; G adds ‖g₁‖² = 4
    x.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y.grad = torch.tensor([[0.0]], dtype=torch.float64)
    opt.step()
    assert opt.eta == pytest.approx(0.06 / math.sqrt(13 + 1e-8), rel=1e-14)


def test_ldog_first_step_by_hand_is_per_tensor():
    x = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = LDoG([x, y], lr=2.0, reps_rel=1e-3, eps=0.0)
    x.grad = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y.grad = torch.tensor([-4.0], dtype=torch.float64)
    opt.step()
    eta_x, eta_y = 1e-3 * 6 / 2, 1e-3 * 2 / 4
    assert opt.state[x]["eta"] == pytest.approx(eta_x, rel=1e-14)
    assert opt.state[y]["eta"] == pytest.approx(eta_y, rel=1e-14)
    torch.testing.assert_close(x.detach(), torch.tensor([3.0, 4.0 - 2 * 2 * eta_x], dtype=torch.float64))
    torch.testing.assert_close(y.detach(), torch.tensor([1.0 + 2 * 4 * eta_y], dtype=torch.float64))


def test_decoupled_decay_scales_by_the_step_size():
    x = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = DoG([x], init_eta=0.1, lr=0.5, weight_decay=0.2, decay_mode="decoupled")
    x.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    opt.step()
    s = 0.5 * 0.1  # lr multiplies init_eta too
    want = torch.tensor([3.0, 4.0], dtype=torch.float64) * (1 - s * 0.2) - s * x.grad
    torch.testing.assert_close(x.detach(), want, rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- where optfit chooses
def test_group_lr_multiplies_the_shared_eta():
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = DoG([{"params": [a]}, {"params": [b], "lr": 0.25}], init_eta=0.1)
    for _ in range(4):
        a.grad = torch.full((3,), 1.0, dtype=torch.float64)
        b.grad = torch.full((3,), 1.0, dtype=torch.float64)
        before_a, before_b = a.detach().clone(), b.detach().clone()
        opt.step()
        torch.testing.assert_close(before_b - b.detach(), 0.25 * (before_a - a.detach()), rtol=1e-14, atol=0)


def test_missing_gradient_still_counts_in_the_distance():
    """A tensor that moved and then has no gradient adds its distance to r̄, as a zero gradient would."""
    runs = {}
    for missing in (True, False):
        init, loss = _problem(1)
        ps = _params(init)
        opt = DoG(ps, reps_rel=1e-2)
        for t in range(20):
            _grad(ps, loss)
            if t >= 5:
                ps[0].grad = None if missing else torch.zeros_like(ps[0])
            opt.step()
        runs[missing] = ([p.detach().clone() for p in ps], opt.dog_state)
    for a, b in zip(runs[True][0], runs[False][0]):  # same sums, added in another order
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert runs[True][1]["rbar"] == pytest.approx(runs[False][1]["rbar"], rel=1e-13)
    assert not torch.equal(runs[True][0][0], _problem(1)[0][0])


def test_global_settings_must_agree_across_groups():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    for key, value in (("reps_rel", 1e-4), ("eps", 1e-3), ("init_eta", 0.1)):
        with pytest.raises(ValueError, match=key):
            DoG([{"params": [a]}, {"params": [b], key: value}])
    LDoG([{"params": [a]}, {"params": [b], "reps_rel": 1e-4}])  # per tensor: fine


def test_invalid_values():
    p = [torch.ones(2, requires_grad=True)]
    for kw, name in (({"reps_rel": 0.0}, "reps_rel"), ({"init_eta": 0.0}, "init_eta"),
                     ({"cautious": True}, "cautious"), ({"eps": -1.0}, "eps")):
        with pytest.raises(ValueError, match=name):
            DoG(p, **kw)
    DoG(p, reps_rel=0.0, init_eta=1e-3)  # init_eta replaces r_ε


@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_resume_mid_run_is_bit_exact(cls):
    init, loss = _problem(2)
    ps = _params(init)
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.01}], reps_rel=1e-3)
    for _ in range(7):
        _grad(ps, loss), opt.step()
    saved_ps, saved = [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict())
    for _ in range(5):
        _grad(ps, loss), opt.step()
    ps2 = _params(saved_ps)
    opt2 = cls([{"params": ps2[:2]}, {"params": ps2[2:], "weight_decay": 0.01}], reps_rel=1e-3)
    opt2.load_state_dict(saved)
    for _ in range(5):
        _grad(ps2, loss), opt2.step()
    for a, b in zip(ps, ps2):
        assert torch.equal(a, b)
    if cls is DoG:
        assert opt.state_dict()["optfit"]["dog"] == opt2.state_dict()["optfit"]["dog"]


# ------------------------------------------------------------------------------------------ averager
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)).double()

    def forward(self, x):
        return self.body(x)


def test_poly_averager_matches_reference_package():
    dog = pytest.importorskip("dog")
    model = _Net()
    ref = dog.PolynomialDecayAverager(model, gamma=8.0)
    ours = PolyAverager(model, gamma=8.0)
    opt = DoG(model.parameters(), reps_rel=1e-3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        ref.step(), ours.step()
        want = ref.averaged_model.state_dict()
        assert want.keys() == ours.averages.keys()
        for k, v in want.items():
            torch.testing.assert_close(ours.averages[k], v, rtol=1e-12, atol=1e-14)
    live = model.body[0].weight.detach()
    assert not torch.allclose(ours.averages["body.0.weight"], live)


def test_poly_averager_weights_by_hand_and_swaps():
    p = torch.zeros(2, dtype=torch.float64)
    avg = PolyAverager([p], gamma=1.0)
    for t, value in enumerate([2.0, 4.0, 8.0], start=1):
        p.fill_(value)
        avg.step()  # w = 2/(t+1): 1, 2/3, 1/2
    # x̄ = 2 → 2/3·4 + 1/3·2 = 10/3 → ½·8 + ½·10/3 = 17/3
    torch.testing.assert_close(avg.averaged_parameters()[0], torch.full((2,), 17 / 3, dtype=torch.float64))
    with avg.swapped():
        torch.testing.assert_close(p, torch.full((2,), 17 / 3, dtype=torch.float64))
    assert torch.equal(p, torch.full((2,), 8.0, dtype=torch.float64))
    saved = copy.deepcopy(avg.state_dict())
    other = PolyAverager([torch.zeros(2, dtype=torch.float64)], gamma=5.0)
    other.load_state_dict(saved)
    assert other.t == 4 and other.gamma == 1.0
    assert torch.equal(other.averaged_parameters()[0], avg.averaged_parameters()[0])
