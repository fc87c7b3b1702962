"""Catalogue D2 (AdaFisher / AdaFisherW): the factors against hand-computed batch statistics, the Fisher-scaled step
against kron(H, S) + λ, the sanity tests, decay modes, hooks and the state round trip."""

from __future__ import annotations

import copy
import gc
import io
import weakref

import pytest
import torch
import torch.nn.functional as NF
from torch import nn

import optfit
from optfit.optim import AdaFisher, AdaFisherW

D = torch.float64


def minmax(x):
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


def first_fold(new, gamma=0.8):
    """H (or S) after the first collection from H = 1 with the released constants."""
    return 0.1 * gamma * torch.ones_like(new) + 0.01 * gamma * new


def backward_with(out, dout):
    """A loss whose gradient with respect to ``out`` is exactly ``dout``."""
    (out * dout).sum().backward()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)).to(D)


# ------------------------------------------------------------------------------------------ sanity tests
def _hand_momentum_sgd(theta, grads, lr, beta, wd=0.0):
    theta, m, out = theta.clone(), torch.zeros_like(theta), []
    for t, g in enumerate(grads, 1):
        m = beta * m + (1 - beta) * (g + wd * theta)
        theta = theta - lr / (1 - beta**t) * m
        out.append(theta.clone())
    return out


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_without_model_is_bias_corrected_ema_momentum_sgd(impl):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(3, 4, dtype=D, generator=gen, requires_grad=True)
    theta0 = p.detach().clone()
    grads = [torch.randn(3, 4, dtype=D, generator=gen) for _ in range(6)]
    opt = AdaFisher([p], lr=0.1, beta=0.8, weight_decay=0.05, impl=impl)
    for g, want in zip(grads, _hand_momentum_sgd(theta0, grads, 0.1, 0.8, wd=0.05)):
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-15)


def test_model_of_only_unsupported_modules_is_momentum_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4)).to(D)
    opt = optfit.create_optimizer(model, "adafisher", lr=0.5)
    assert opt.supported_modules == []
    w = model[0].weight
    theta, m = w.detach().clone(), torch.zeros_like(w)
    idx = torch.tensor([1, 3, 3, 7])
    for t in range(1, 6):
        opt.zero_grad()
        (model(idx) ** 2).sum().backward()
        g = w.grad.detach().clone()
        opt.step()
        m = 0.9 * m + 0.1 * g
        theta = theta - 0.5 / (1 - 0.9**t) * m
        torch.testing.assert_close(w.detach(), theta, rtol=1e-13, atol=1e-15)


def test_frozen_factors_are_a_fixed_per_element_rescaling():
    """T_cov → ∞: after the first collection every step of a supported layer is the momentum step divided by a
    constant F̃ = kron(H, S) + λ."""
    a = mlp()
    b = copy.deepcopy(a)
    opt_a = AdaFisher(a.parameters(), model=a, lr=0.01, t_cov=10**9)
    opt_b = AdaFisher(b.parameters(), lr=0.01)  # no model: F̃ = 1 everywhere
    gen = torch.Generator().manual_seed(1)
    backward_with(a(torch.randn(8, 4, dtype=D, generator=gen)), torch.randn(8, 2, dtype=D, generator=gen))
    grads = [[q.grad.clone() for q in a.parameters()]]
    grads += [[torch.randn(q.shape, dtype=D, generator=gen) for q in a.parameters()] for _ in range(4)]
    fixed = None
    for gs in grads:
        before_a = [q.detach().clone() for q in a.parameters()]
        before_b = [q.detach().clone() for q in b.parameters()]
        for qa, qb, g in zip(a.parameters(), b.parameters(), gs):
            qa.grad, qb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        fis = [opt_a.fisher_diagonal(q) for q in a.parameters()]
        assert all(f is not None for f in fis)
        if fixed is None:
            fixed = [f.clone() for f in fis]
        for f, f0 in zip(fis, fixed):
            assert torch.equal(f, f0)
        for qa, qb, xa, xb, f in zip(a.parameters(), b.parameters(), before_a, before_b, fixed):
            torch.testing.assert_close((qa.detach() - xa) * f, qb.detach() - xb, rtol=1e-10, atol=1e-15)


# ------------------------------------------------------------------------------------------ factors
def test_linear_factors_equal_hand_computed_batch_means():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).to(D)
    opt = AdaFisher(lin.parameters(), model=lin, t_cov=2)
    x, dout = torch.randn(2, 5, 3, dtype=D), torch.randn(2, 5, 2, dtype=D)  # rows = all leading dims
    backward_with(lin(x), dout)
    opt.step()
    rows = x.reshape(-1, 3)
    abar = torch.cat([rows, torch.ones(10, 1, dtype=D)], 1)
    H1 = first_fold(minmax((abar**2).mean(0)))
    S1 = first_fold(minmax((dout.reshape(-1, 2) ** 2).mean(0)))
    H, S = opt.factors(lin)
    torch.testing.assert_close(H, H1, rtol=1e-12, atol=0)
    torch.testing.assert_close(S, S1, rtol=1e-12, atol=0)

    # step 2 (clock 1): not collected; step 3 (clock 2): EMA with the new batch
    x2, d2 = torch.randn(4, 3, dtype=D), torch.randn(4, 2, dtype=D)
    for clock in (1, 2):
        opt.zero_grad()
        backward_with(lin(x2), d2)
        opt.step()
        if clock == 1:
            assert torch.equal(opt.factors(lin)[0], H1)
    abar2 = torch.cat([x2, torch.ones(4, 1, dtype=D)], 1)
    torch.testing.assert_close(opt.factors(lin)[0], 0.08 * H1 + 0.008 * minmax((abar2**2).mean(0)), rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.factors(lin)[1], 0.08 * S1 + 0.008 * minmax((d2**2).mean(0)), rtol=1e-12, atol=0)


def test_standard_factor_ema_and_no_bias():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False).to(D)
    opt = AdaFisher(lin.parameters(), model=lin, gamma=0.3, factor_ema="standard")
    x, dout = torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    backward_with(lin(x), dout)
    opt.step()
    H, S = opt.factors(lin)
    torch.testing.assert_close(H, 0.3 + 0.7 * minmax((x**2).mean(0)), rtol=1e-12, atol=0)
    torch.testing.assert_close(S, 0.3 + 0.7 * minmax((dout**2).mean(0)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_conv2d_factors_tiny_example(padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(2, 1), groups=2,
                     padding_mode=padding_mode).to(D)
    opt = AdaFisher(conv.parameters(), model=conv)
    x = torch.randn(2, 4, 5, 6, dtype=D)
    out = conv(x)
    dout = torch.randn(out.shape, dtype=D)
    backward_with(out, dout)
    opt.step()
    # oracle: explicit im2col with F.unfold, one row per (sample, group, output position)
    xp = NF.pad(x, (1, 1, 1, 1), mode="constant" if padding_mode == "zeros" else padding_mode)
    cols = NF.unfold(xp, (2, 3), dilation=(2, 1), stride=(1, 2))  # (B, 4·6, L) ordered (channel, kh, kw)
    rows = cols.view(2, 2, 12, -1).permute(0, 1, 3, 2).reshape(-1, 12)
    abar = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=D)], 1)
    H, S = opt.factors(conv)
    torch.testing.assert_close(H, first_fold(minmax((abar**2).mean(0))), rtol=1e-12, atol=0)
    torch.testing.assert_close(S, first_fold(minmax((dout**2).mean((0, 2, 3)))), rtol=1e-12, atol=0)


def test_norm_layers_use_the_released_summed_statistics():
    torch.manual_seed(0)
    ln, bn = nn.LayerNorm(4).to(D), nn.BatchNorm2d(3).to(D)
    opt = AdaFisher(list(ln.parameters()) + list(bn.parameters()), model=nn.ModuleList([ln, bn]))
    x, d = torch.randn(5, 4, dtype=D), torch.randn(5, 4, dtype=D)
    xb, db = torch.randn(2, 3, 2, 2, dtype=D), torch.randn(2, 3, 2, 2, dtype=D)
    backward_with(ln(x), d)
    backward_with(bn(xb), db)
    opt.step()
    u = x.sum(0)
    H, S = opt.factors(ln)
    torch.testing.assert_close(H, first_fold(minmax(torch.stack([(u**2).sum(), torch.tensor(4.0, dtype=D)]) / 25)))
    torch.testing.assert_close(S, first_fold(minmax(d.sum(0) ** 2 / 5)))
    ub = xb.sum((0, 2, 3)) / 16
    H, S = opt.factors(bn)
    torch.testing.assert_close(H, first_fold(minmax(torch.stack([(ub**2).sum(), torch.tensor(3.0, dtype=D)]) / 4)))
    torch.testing.assert_close(S, first_fold(minmax(db.sum((0, 2, 3)) ** 2 / 2)))
    torch.testing.assert_close(opt.fisher_diagonal(bn.weight), S * H[0] + 1e-3)
    torch.testing.assert_close(opt.fisher_diagonal(bn.bias), S * H[1] + 1e-3)


def test_inplace_activation_after_the_layer_does_not_change_the_output_gradient():
    factors = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(inplace=inplace), nn.Linear(5, 1)).to(D)
        opt = AdaFisher(model.parameters(), model=model)
        (model(torch.randn(7, 3, dtype=D)) ** 2).sum().backward()
        opt.step()
        factors.append(opt.factors(model[0]))
    assert torch.equal(factors[0][0], factors[1][0]) and torch.equal(factors[0][1], factors[1][1])


# ------------------------------------------------------------------------------------------ the step
def test_fisher_scaled_step_of_a_linear_layer_equals_kron_plus_damping():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).to(D)
    lr, damping = 1e-3, 1e-3
    opt = AdaFisher(lin.parameters(), model=lin, lr=lr, damping=damping)
    x, dout = torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    backward_with(lin(x), dout)
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    opt.step()
    H, S = opt.factors(lin)
    F = torch.kron(S, H).view(2, 4) + damping  # F[o, i] = S_o H_i ; column 3 = the bias (ones column)
    # first step: m = (1−β) g and the bias correction 1/(1−β) cancel → Δθ = −η g / F̃
    torch.testing.assert_close(lin.weight.detach(), w0 - lr * gw / F[:, :3], rtol=1e-13, atol=1e-16)
    torch.testing.assert_close(lin.bias.detach(), b0 - lr * gb / F[:, 3], rtol=1e-13, atol=1e-16)
    # with the released constants F̃ ≈ 0.0074…0.0087 here: the layer moves ~100× farther than plain momentum
    assert float(F.max()) < 0.0088 and float(F.min()) > 0.0074


@pytest.mark.parametrize("cls", [AdaFisher, AdaFisherW])
def test_coupled_adafisher_vs_decoupled_adafisherw(cls):
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).to(D)
    lr, wd = 0.01, 0.1
    opt = cls(lin.parameters(), model=lin, lr=lr, weight_decay=wd)
    w0 = lin.weight.detach().clone()
    backward_with(lin(torch.randn(6, 3, dtype=D)), torch.randn(6, 2, dtype=D))
    g = lin.weight.grad.clone()
    opt.step()
    F = opt.fisher_diagonal(lin.weight)
    if cls is AdaFisher:  # m = (1−β)(g + λθ): the decay is preconditioned too
        want = w0 - lr * (g + wd * w0) / F
    else:  # θ ← θ(1 − ηλ) − η m̂/F̃
        want = w0 * (1 - lr * wd) - lr * g / F
    torch.testing.assert_close(lin.weight.detach(), want, rtol=1e-13, atol=1e-16)
    assert optfit.optimizer_info("adafisherw").defaults["decay_mode"] == "decoupled"
    assert optfit.optimizer_info("adafisher").defaults["decay_mode"] == "coupled"


def test_foreach_matches_reference_with_fisher():
    runs = []
    for impl in ("reference", "foreach"):
        model = mlp().float()
        opt = AdaFisher(model.parameters(), model=model, lr=1e-3, t_cov=2, weight_decay=0.01, cautious=True,
                        impl=impl)
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):
            opt.zero_grad()
            (model(torch.randn(8, 4, generator=gen)) ** 2).mean().backward()
            opt.step()
        runs.append([p.detach() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------- mapping and factory
def test_mapping_is_by_identity_not_by_order():
    class Scrambled(nn.Module):  # registration order ≠ call order, an unsupported module in between
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(5, 2)
            self.emb = nn.Embedding(6, 3)
            self.body = nn.Linear(3, 5)

        def forward(self, idx):
            return self.head(torch.tanh(self.body(self.emb(idx))))

    results = []
    for order in ("natural", "reversed"):
        torch.manual_seed(0)
        model = Scrambled().to(D)
        params = list(model.parameters())
        if order == "reversed":
            params = [{"params": params[::-1][:2]}, {"params": params[::-1][2:]}]
        opt = AdaFisher(params, model=model, t_cov=2)
        for _ in range(4):
            opt.zero_grad()
            (model(torch.tensor([0, 2, 5, 1])) ** 2).sum().backward()
            opt.step()
        assert opt.fisher_diagonal(model.emb.weight) is None
        assert opt.fisher_diagonal(model.body.weight).shape == (5, 3)
        assert opt.factors(model.head)[0].shape == (6,) and opt.factors(model.body)[1].shape == (5,)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_factory_passes_the_model():
    model = mlp()
    assert optfit.create_optimizer(model, "adafisher").supported_modules == ["0", "1", "3"]
    assert optfit.create_optimizer(model.parameters(), "adafisher").supported_modules == []
    opt = optfit.create_optimizer(model.parameters(), "adafisherw", model=model)
    assert opt.supported_modules == ["0", "1", "3"]
    assert AdaFisher(model).supported_modules == ["0", "1", "3"]  # the model itself as params


def test_tied_parameters_stay_unsupported():
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    with pytest.warns(UserWarning, match="shares a parameter"):
        opt = AdaFisher(nn.ModuleList([a, b]).parameters(), model=nn.ModuleList([a, b]))
    assert opt.supported_modules == []


@pytest.mark.parametrize("key,value", [("damping", 0.0), ("t_cov", 0), ("gamma", 1.0), ("beta", 1.0),
                                       ("factor_ema", "paper"), ("weight_decay", -1.0)])
def test_bad_arguments_name_themselves(key, value):
    with pytest.raises(ValueError, match=key):
        AdaFisher(mlp().parameters(), **{key: value})


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model"):
        AdaFisher(mlp().parameters(), model="net")


# ---------------------------------------------------------------------------------- hooks and memory
def test_remove_hooks_freezes_the_factors_and_detaches():
    model = mlp()
    opt = AdaFisher(model.parameters(), model=model, t_cov=1)
    (model(torch.randn(4, 4, dtype=D)) ** 2).sum().backward()
    opt.step()
    frozen = [opt.factors(m) for m in (model[0], model[1], model[3])]
    opt.remove_hooks()
    assert all(not m._forward_hooks for m in model.modules())
    opt.zero_grad()
    (model(torch.randn(4, 4, dtype=D)) ** 2).sum().backward()
    opt.step()
    for m, (H, S) in zip((model[0], model[1], model[3]), frozen):
        assert opt.factors(m)[0] is H and opt.factors(m)[1] is S


def test_hooks_go_with_the_optimizer_and_keep_no_activation():
    model = mlp()
    opt = AdaFisher(model.parameters(), model=model)
    x = torch.randn(4, 4, dtype=D)
    alive = weakref.ref(x)
    (model(x) ** 2).sum().backward()
    opt.step()
    del x
    assert alive() is None  # freed by reference counting alone: no hook holds it
    del opt
    gc.collect()  # torch's Optimizer sits in a reference cycle
    assert all(not m._forward_hooks for m in model.modules())


def test_no_statistics_under_no_grad_and_schedule_every_t_cov():
    model = mlp()
    opt = AdaFisher(model.parameters(), model=model, t_cov=3)
    with torch.no_grad():
        model(torch.randn(4, 4, dtype=D))
    assert opt.factors(model[0]) == (None, None)
    seen = []
    for _ in range(7):
        opt.zero_grad()
        (model(torch.randn(4, 4, dtype=D)) ** 2).sum().backward()
        opt.step()
        seen.append(opt.factors(model[0])[0].clone())
    changed = [i for i in range(1, 7) if not torch.equal(seen[i], seen[i - 1])]
    assert changed == [3, 6]


@pytest.mark.parametrize("policy", ["raise", "skip", "ignore"])
def test_nonfinite_statistics_follow_the_policy(policy):
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    lin.weight.requires_grad_(False)
    opt = AdaFisher([lin.bias], model=lin, nonfinite=policy)
    x = torch.tensor([[1e30, 1.0]])  # x² overflows float32; the gradients stay finite
    (lin(x) * 0).sum().backward()
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="Linear"):
            opt.step()
        assert opt.factors(lin) == (None, None) and opt.fisher_steps == 0
    elif policy == "skip":
        opt.step()
        assert opt.skipped_steps == 1 and opt.factors(lin) == (None, None)
    else:
        opt.step()
        assert torch.isfinite(opt.factors(lin)[0]).all()


# ------------------------------------------------------------------------------------------ state
def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        (model(torch.randn(8, 4, dtype=D, generator=gen)) ** 2).mean().backward()
        opt.step()


def test_state_dict_resume_is_bit_exact_including_the_factors():
    model = mlp()
    opt = AdaFisher(model.parameters(), model=model, lr=0.01, t_cov=2)
    _train(model, opt, 5, seed=0)
    saved_model = copy.deepcopy(model.state_dict())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    _train(model, opt, 5, seed=1)

    model2 = mlp(seed=9)
    model2.load_state_dict(saved_model)
    opt2 = AdaFisher(model2.parameters(), model=model2, lr=0.01, t_cov=2)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.fisher_steps == 5
    _train(model2, opt2, 5, seed=1)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
    for m, m2 in zip((model[0], model[1], model[3]), (model2[0], model2[1], model2[3])):
        for a, b in zip(opt.factors(m), opt2.factors(m2)):
            assert torch.equal(a, b)


def test_loading_factors_needs_the_model():
    model = mlp()
    opt = AdaFisher(model.parameters(), model=model)
    _train(model, opt, 1, seed=0)
    with pytest.raises(ValueError, match="model="):
        AdaFisher(mlp().parameters()).load_state_dict(opt.state_dict())
