"""Adam+CM (arXiv 2307.09638): hand-computed steps through the buffer's fill, replacement and refusal, the group
priority shared by a group's tensors, and the paper's algorithm written out with a list as the buffer, followed
step for step on a mini-batch problem (so that both replacement and refusal happen)."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import AdamCM

F64 = torch.float64


# --------------------------------------------------------------------------------------- the paper's loop
def paper_adam_cm(grad_fn, start, steps, lrs, groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, size=5,
                  decay=0.7, scope="group"):
    """The algorithm with the buffer as a list of [priority, momentum] in insertion order: m̃ = m + mean(buffer)
    (before inserting m), insert m with priority π (group: Σ‖g‖ over the tensor's group; tensor: ‖g‖) while the
    buffer has room, else replace the first lowest-priority entry if π exceeds it; v from m̃²; priorities × λ.
    Decoupled weight decay. Returns every iterate and the numbers of (replacements, refusals)."""
    b1, b2 = betas
    w = [x.clone() for x in start]
    m = [torch.zeros_like(x) for x in start]
    v = [torch.zeros_like(x) for x in start]
    buffers = [[] for _ in start]
    counts = [0, 0]
    out = []
    for t in range(1, steps + 1):
        grads = grad_fn(w, t)
        group_priority = {}
        for g, k in zip(grads, groups):
            group_priority[k] = group_priority.get(k, 0.0) + float(g.norm())
        new_w = []
        for i, (x, g, lr) in enumerate(zip(w, grads, lrs)):
            x = x * (1 - lr * weight_decay)
            m[i] = b1 * m[i] + (1 - b1) * g
            buf = buffers[i]
            agg = m[i] + sum(e[1] for e in buf) / len(buf) if buf else m[i]
            pi = group_priority[groups[i]] if scope == "group" else float(g.norm())
            if len(buf) < size:
                buf.append([pi, m[i].clone()])
            else:
                j = min(range(size), key=lambda k: buf[k][0])
                if pi > buf[j][0]:
                    buf[j] = [pi, m[i].clone()]
                    counts[0] += 1
                else:
                    counts[1] += 1
            v[i] = b2 * v[i] + (1 - b2) * agg * agg
            new_w.append(x - lr / (1 - b1**t) * agg / (v[i].sqrt() / math.sqrt(1 - b2**t) + eps))
            for e in buf:
                e[0] *= decay
        w = new_w
        out.append(w)
    return out, counts


def _minibatch_grads(ws, t):
    """A tanh network's gradient on mini-batch t (seeded), the loss weighted by 10^U(−2, 1): gradient norms range
    over three orders of magnitude from step to step."""
    W1, b1, W2 = [x.detach().requires_grad_() for x in ws]
    gen = torch.Generator().manual_seed(1000 + t)
    X = torch.randn(8, 3, generator=gen, dtype=F64)
    Y = torch.randn(8, 2, generator=gen, dtype=F64)
    weight = 10 ** (3 * float(torch.rand(1, generator=gen, dtype=F64)) - 2)
    loss = weight * ((torch.tanh(X @ W1.T + b1) @ W2.T - Y) ** 2).mean()
    return torch.autograd.grad(loss, [W1, b1, W2])


def _start():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, generator=gen, dtype=F64),
            torch.randn(2, 4, generator=gen, dtype=F64)]


@pytest.mark.parametrize("setting", [
    dict(hp={}, lrs=(1e-3,) * 3, groups=(0, 0, 0)),
    dict(hp=dict(lr=0.01, betas=(0.8, 0.99), buffer_size=3, priority_decay=0.9, weight_decay=0.1),
         lrs=(0.01, 0.01, 0.003), groups=(0, 0, 1)),
    dict(hp=dict(lr=0.02, eps=1e-6, buffer_size=2, priority_decay=0.5, priority_scope="tensor"),
         lrs=(0.02,) * 3, groups=(0, 0, 0)),
], ids=["defaults", "two-groups", "tensor-priority"])
@pytest.mark.parametrize("impl", ["reference", "foreach", "compiled"])
def test_follows_the_papers_algorithm_every_step(setting, impl):
    hp, lrs, groups = setting["hp"], setting["lrs"], setting["groups"]
    params = [x.clone().requires_grad_() for x in _start()]
    param_groups = [{"params": params[:2]}, {"params": params[2:], "lr": lrs[2]}] if groups[2] else params
    opt = AdamCM(param_groups, impl=impl, **hp)
    paper, counts = paper_adam_cm(
        _minibatch_grads, _start(), 60, lrs, groups, betas=hp.get("betas", (0.9, 0.999)), eps=hp.get("eps", 1e-8),
        weight_decay=hp.get("weight_decay", 0.0), size=hp.get("buffer_size", 5),
        decay=hp.get("priority_decay", 0.7), scope=hp.get("priority_scope", "group"))
    assert min(counts) > 0, counts  # both a replacement and a refusal happened
    for t, expected in enumerate(paper, start=1):
        for p, g in zip(params, _minibatch_grads(params, t)):
            p.grad = g
        opt.step()
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12, msg=f"step {t}")


# ------------------------------------------------------------------------------------ hand-computed steps
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_buffer_fills_replaces_its_lowest_priority_and_refuses_by_hand(impl):
    lr, (b1, b2), eps, lam = 0.1, (0.9, 0.999), 1e-8, 0.5
    x = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    opt = AdamCM([x], lr=lr, betas=(b1, b2), eps=eps, buffer_size=2, priority_decay=lam, priority_scope="tensor",
                 impl=impl)
    st = opt.state
    g1 = torch.tensor([3.0, 4.0], dtype=F64)  # ‖g₁‖ = 5
    g2 = torch.tensor([0.6, 0.8], dtype=F64)  # 1
    g3 = torch.tensor([-1.8, 2.4], dtype=F64)  # 3: above the lowest priority, slot 1's 1·λ = 0.5
    g4 = torch.tensor([0.0, 0.1], dtype=F64)  # 0.1: below every priority, refused
    x0 = x.detach().clone()

    def adam(agg, v, t):
        return lr / (1 - b1**t) * agg / (v.sqrt() / math.sqrt(1 - b2**t) + eps)

    x.grad = g1
    opt.step()
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * m1 * m1  # m̃₁ = m₁ (empty buffer)
    x1 = x0 - adam(m1, v1, 1)
    torch.testing.assert_close(x.detach(), x1, rtol=1e-14, atol=0)
    assert st[x]["critical_priorities"].tolist() == [5.0 * lam, -math.inf]
    torch.testing.assert_close(st[x]["critical_momenta"][0], m1, rtol=0, atol=0)

    x.grad = g2
    opt.step()
    m2 = b1 * m1 + (1 - b1) * g2
    agg2 = m2 + m1
    v2 = b2 * v1 + (1 - b2) * agg2 * agg2
    x2 = x1 - adam(agg2, v2, 2)
    torch.testing.assert_close(x.detach(), x2, rtol=1e-14, atol=0)
    torch.testing.assert_close(st[x]["critical_priorities"], torch.tensor([5 * lam**2, 1 * lam], dtype=F64))

    x.grad = g3
    opt.step()  # priorities (1.25, 0.5): the lowest is slot 1 (m₂), and 3 > 0.5
    m3 = b1 * m2 + (1 - b1) * g3
    agg3 = m3 + (m1 + m2) / 2
    v3 = b2 * v2 + (1 - b2) * agg3 * agg3
    x3 = x2 - adam(agg3, v3, 3)
    torch.testing.assert_close(x.detach(), x3, rtol=1e-13, atol=0)
    torch.testing.assert_close(st[x]["critical_momenta"], torch.stack([m1, m3]), rtol=0, atol=0)
    torch.testing.assert_close(st[x]["critical_priorities"], torch.tensor([5 * lam**3, 3 * lam], dtype=F64))

    x.grad = g4
    opt.step()  # 0.1 < min(0.625, 1.5): refused
    m4 = b1 * m3 + (1 - b1) * g4
    agg4 = m4 + (m1 + m3) / 2
    v4 = b2 * v3 + (1 - b2) * agg4 * agg4
    torch.testing.assert_close(x.detach(), x3 - adam(agg4, v4, 4), rtol=1e-13, atol=0)
    torch.testing.assert_close(st[x]["critical_momenta"], torch.stack([m1, m3]), rtol=0, atol=0)
    torch.testing.assert_close(st[x]["critical_priorities"], torch.tensor([5 * lam**4, 3 * lam**2], dtype=F64))


def test_group_priority_makes_a_groups_tensors_replace_together():
    """priority_scope="group": π = Σ‖g‖ over the group, so a tensor whose own gradient is tiny still replaces its
    entry when the group's gradient is large; with "tensor" it does not."""
    def run(scope):
        a = torch.zeros(2, dtype=F64, requires_grad=True)
        b = torch.zeros(3, dtype=F64, requires_grad=True)
        opt = AdamCM([a, b], buffer_size=1, priority_decay=0.5, priority_scope=scope)
        for ga, gb in [([1.0, 0.0], [0.0, 0.0, 1.0]), ([1e-3, 0.0], [0.0, 8.0, 0.0])]:
            a.grad, b.grad = torch.tensor(ga, dtype=F64), torch.tensor(gb, dtype=F64)
            opt.step()
        return opt.state[a]["critical_priorities"], opt.state[b]["critical_priorities"]

    pa, pb = run("group")
    assert torch.equal(pa, pb) and float(pa) == pytest.approx((8.0 + 1e-3) * 0.5, rel=1e-14)  # 2·0.5 < 8.001
    pa, pb = run("tensor")
    assert float(pa) == pytest.approx(1.0 * 0.25, rel=1e-14)  # a's own 1e-3 < 0.5: refused
    assert float(pb) == pytest.approx(8.0 * 0.5, rel=1e-14)


@pytest.mark.parametrize("bad", [{"buffer_size": 0}, {"buffer_size": 2.5}, {"priority_decay": 1.0},
                                 {"priority_decay": -0.1}, {"priority_scope": "model"}])
def test_invalid_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AdamCM([torch.zeros(2, requires_grad=True)], **bad)
