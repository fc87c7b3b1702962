"""small_fc_lopt: hand-computed MLP step, features vs direct formulas, the weights file, the class's extras.

The torch.optim contract itself is checked for every registry name by tests/optim/test_conformance.py."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import optfit
from optfit.learned import small_fc_lopt as L
from optfit.learned.meta import initial_weights
from optfit.learned.small_fc_lopt import LoptWeights, SmallFCLOpt, load_weights, save_weights

_f32 = lambda *v: tuple(float(x) for x in torch.tensor(v, dtype=torch.float32))  # noqa: E731
MOM, (RMS,), FAC = _f32(0.9, 0.99, 0.999), _f32(0.999), _f32(0.5, 0.9, 0.99)  # as stored (float32)


def _weights(layers, mom=MOM, rms=RMS, fac=FAC, **kw) -> LoptWeights:
    return LoptWeights(tuple((torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))
                             for w, b in layers), torch.tensor(mom), torch.tensor([rms]), torch.tensor(fac), **kw)


def _picker(channel: int, time_weight: float = 0.0, bias=(0.0, 0.0), out_bias=(0.0, 0.0), a_row=(1.0, 1.0)):
    """39 → 2 → 2: h = relu(±x_channel + time_weight·tf₀ + bias); d = h₀ − h₁, a = a_row·h + out_bias₁."""
    w0 = torch.zeros(2, L.N_FEATURES)
    w0[0, channel], w0[1, channel] = 1.0, -1.0
    w0[0, L.N_GRAD_FEATURES] = time_weight
    w1 = torch.tensor([[1.0, -1.0], list(a_row)])
    return _weights([(w0, torch.tensor(bias)), (w1, torch.tensor(out_bias))])


def test_mlp_step_equals_hand_computation(tmp_path):
    """One step on a vector: d and a by hand from the normalised gradient feature and tanh(0/1 − 1)."""
    path = tmp_path / "w.safetensors"
    save_weights(path, _picker(0, time_weight=0.5, bias=(0.1, 0.2), out_bias=(0.0, 300.0)))
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = SmallFCLOpt([p], lr=2.0, weights=str(path))
    p.grad = torch.tensor([0.5, -1.0])
    opt.step()
    norm = math.sqrt((0.25 + 1.0) / 2 + 1e-5)
    tf = math.tanh(-1.0)
    expected = []
    for g, p0 in ((0.5, 1.0), (-1.0, -2.0)):
        x = g / norm
        h0, h1 = max(x + 0.5 * tf + 0.1, 0.0), max(-x + 0.2, 0.0)
        d, a = h0 - h1, h0 + h1 + 300.0
        expected.append(p0 - 2.0 * 0.01 * d * math.exp(0.001 * a))
    torch.testing.assert_close(p.detach(), torch.tensor(expected), rtol=1e-6, atol=1e-7)


def _direct_state(grads, shape):
    m = [torch.zeros(shape) for _ in MOM]
    r = torch.zeros(shape)
    R = [torch.zeros(shape[:-1]) for _ in FAC]
    C = [torch.zeros(shape[-1:]) for _ in FAC]
    for g in grads:
        for i, b in enumerate(MOM):
            m[i] = b * m[i] + (1 - b) * g
        r = RMS * r + (1 - RMS) * g * g
        for j, b in enumerate(FAC):
            R[j] = b * R[j] + (1 - b) * (g * g).mean(-1)
            C[j] = b * C[j] + (1 - b) * (g * g).mean(-2)
    return m, r, R, C


def test_accumulators_and_features_match_direct_formulas():
    gen = torch.Generator().manual_seed(0)
    shape = (3, 4)
    grads = [torch.randn(shape, generator=gen) for _ in range(3)]
    p = torch.randn(shape, generator=gen)
    w = _weights([(torch.zeros(2, L.N_FEATURES), torch.zeros(2))])
    st = L.init_state(p.unsqueeze(0))
    for g in grads:
        L.accumulate(g.unsqueeze(0), st, w.mom_decays, w.rms_decay, w.fac_decays)
    m, r, R, C = _direct_state(grads, shape)
    torch.testing.assert_close(st["mom"][0], torch.stack(m), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(st["rms"][0], r, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(st["fac_row"][0], torch.stack(R), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(st["fac_col"][0], torch.stack(C), rtol=1e-6, atol=1e-8)

    g = grads[-1]
    vhat = [torch.outer(R[j], C[j]) / R[j].mean() for j in range(3)]  # Adafactor's rank-1 estimate of E[g²]
    raw = [g, p, *m, r, *(mi / r.sqrt() for mi in m), 1 / r.sqrt(), *(g / v.sqrt() for v in vhat),
           *(Rj[:, None].expand(shape) for Rj in R), *(Cj[None, :].expand(shape) for Cj in C),
           *(1 / Rj[:, None].sqrt().expand(shape) for Rj in R), *(1 / Cj[None, :].sqrt().expand(shape) for Cj in C),
           *(mj / v.sqrt() for mj, v in zip(m, vhat))]
    assert len(raw) == L.N_GRAD_FEATURES
    direct = torch.stack([x.reshape(-1) / torch.sqrt((x ** 2).mean() + 1e-5) for x in raw])
    got = L.features(p.unsqueeze(0), g.unsqueeze(0), st, torch.float32)[0]
    torch.testing.assert_close(got, direct, rtol=1e-4, atol=1e-5)


def test_vector_features_use_the_full_accumulator():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(5, generator=gen) for _ in range(2)]
    p = torch.randn(5, generator=gen)
    w = _weights([(torch.zeros(2, L.N_FEATURES), torch.zeros(2))])
    st = L.init_state(p.unsqueeze(0))
    for g in grads:
        L.accumulate(g.unsqueeze(0), st, w.mom_decays, w.rms_decay, w.fac_decays)
    V = [(1 - b) * b * grads[0] ** 2 + (1 - b) * grads[1] ** 2 for b in FAC]
    torch.testing.assert_close(st["fac_v"][0], torch.stack(V), rtol=1e-6, atol=1e-8)
    got = L.features(p.unsqueeze(0), grads[1].unsqueeze(0), st, torch.float32)[0]
    nrm = lambda x: x / torch.sqrt((x ** 2).mean() + 1e-5)  # noqa: E731
    for j in range(3):
        torch.testing.assert_close(got[10 + j], nrm(grads[1] / V[j].sqrt()), rtol=1e-4, atol=1e-5)  # fac_g
        torch.testing.assert_close(got[13 + j], nrm(V[j]), rtol=1e-5, atol=1e-6)  # "row" = V
        torch.testing.assert_close(got[22 + j], nrm(1 / V[j].sqrt()), rtol=1e-4, atol=1e-5)  # rsqrt("col")


def test_catalogue_sanity_fixed_map_is_normalised_adafactor_step(tmp_path):
    """F1's sanity test: d = the normalised fac_g feature (first factored decay), a = 0 ⇒ an Adafactor-like step
    of RMS ≈ 0.01·lr per tensor."""
    path = tmp_path / "w.safetensors"
    save_weights(path, _picker(10, a_row=(0.0, 0.0)))
    W = torch.nn.Parameter(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)))
    before = W.detach().clone()
    opt = SmallFCLOpt([W], lr=0.5, weights=path)
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    W.grad = g.clone()
    opt.step()
    R, C = (1 - FAC[0]) * (g * g).mean(1), (1 - FAC[0]) * (g * g).mean(0)
    fac_g = g / torch.sqrt(torch.outer(R, C) / R.mean())
    step = 0.5 * 0.01 * fac_g / torch.sqrt((fac_g ** 2).mean() + 1e-5)
    torch.testing.assert_close(before - W.detach(), step, rtol=1e-4, atol=1e-7)


def test_chunked_mlp_equals_one_evaluation():
    gen = torch.Generator().manual_seed(4)
    w = initial_weights(hidden=8, seed=1, kind="random", out_scale=1.0)
    shapes = [(5, 7), (7, 3), (6, 2), (2, 3, 4), (50,), (), (3,)]
    ps = [torch.randn(1, *s, generator=gen) for s in shapes]
    gs = [torch.randn(1, *s, generator=gen) for s in shapes]
    a = L.lopt_steps(ps, gs, [L.init_state(p) for p in ps], w, 3.0)
    b = L.lopt_steps(ps, gs, [L.init_state(p) for p in ps], w, 3.0, chunk=20)  # > 20 elements: row blocks
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------------ weight files
def test_safetensors_round_trip(tmp_path):
    w = initial_weights(hidden=6, seed=3, kind="random")
    path = tmp_path / "w.safetensors"
    save_weights(path, w, {"note": "hello"})
    back = load_weights(path)
    assert back.shapes() == w.shapes() and back.hidden == 6
    for (a, b), (c, d) in zip(w.layers, back.layers):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert torch.equal(back.fac_decays, w.fac_decays) and back.exp_mult == 0.001 and back.step_mult == 0.01
    assert back.metadata["note"] == "hello" and len(back.sha256) == 64
    assert torch.equal(back.with_flat(back.flat()).flat(), w.flat())


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights=PATH"):
        load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope"):
        SmallFCLOpt([torch.zeros(2, requires_grad=True)], weights=str(tmp_path / "nope.safetensors"))


def test_corrupt_file_is_a_value_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_weights(path)
    good = tmp_path / "good.safetensors"
    save_weights(good, initial_weights(hidden=4))
    path.write_bytes(good.read_bytes()[:-40])  # truncated
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_weights(path)


def _save_raw(path, tensors, metadata=None):
    from safetensors.torch import save_file

    meta = {"format": L.FORMAT, "version": L.FORMAT_VERSION, "exp_mult": "0.001", "step_mult": "0.01"}
    save_file(tensors, str(path), metadata={**meta, **(metadata or {})})


def _raw(hidden=4, n_in=L.N_FEATURES):
    return {"mlp.0.weight": torch.zeros(hidden, n_in), "mlp.0.bias": torch.zeros(hidden),
            "mlp.1.weight": torch.zeros(2, hidden), "mlp.1.bias": torch.zeros(2),
            "decay.momentum": torch.tensor([0.9, 0.99, 0.999]), "decay.rms": torch.tensor([0.999]),
            "decay.adafactor": torch.tensor([0.9, 0.99, 0.999])}


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"mlp.0.weight": torch.zeros(4, 38)}), r"mlp\.0\.weight has shape \(4, 38\)"),
    (lambda t: t.update({"mlp.1.weight": torch.zeros(2, 5)}), r"mlp\.1\.weight has shape \(2, 5\)"),
    (lambda t: t.update({"mlp.1.weight": torch.zeros(4, 4), "mlp.1.bias": torch.zeros(4)}), "4 outputs"),
    (lambda t: t.pop("decay.rms"), r"missing \['decay\.rms'\]"),
    (lambda t: t.update({"extra": torch.zeros(1)}), r"unexpected \['extra'\]"),
    (lambda t: t.update({"decay.adafactor": torch.tensor([0.9, 1.0, 0.5])}), "decay.adafactor must hold"),
    (lambda t: t["mlp.0.bias"].fill_(float("nan")), "mlp.0.bias has non-finite"),
])
def test_wrong_tensors_are_value_errors_naming_them(tmp_path, change, message):
    tensors = _raw()
    change(tensors)
    path = tmp_path / "w.safetensors"
    _save_raw(path, tensors)
    with pytest.raises(ValueError, match=message):
        load_weights(path)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "w.safetensors"
    _save_raw(path, _raw(), {"format": "something-else"})
    with pytest.raises(ValueError, match="not a small_fc_lopt weights file"):
        load_weights(path)


# ------------------------------------------------------------------------------------------------- the class
def test_registry_record_and_packaged_weights():
    info = optfit.optimizer_info("small_fc_lopt")
    assert info.name == "small-fc-lopt" and info.family == "learned" and info.cls is SmallFCLOpt
    w = load_weights()  # the packaged file exists and validates
    assert w.layers[0][0].shape[1] == L.N_FEATURES
    opt = optfit.create_optimizer(torch.nn.Linear(3, 2), "small-fc-lopt")
    assert opt.param_groups[0]["weights"] is None


def test_weights_override_and_per_group_files(tmp_path):
    zero, picker = tmp_path / "zero.safetensors", tmp_path / "pick.safetensors"
    save_weights(zero, initial_weights(hidden=4, kind="zero"))
    save_weights(picker, _picker(6))
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = SmallFCLOpt([{"params": [a]}, {"params": [b], "weights": picker}], weights=zero)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    assert torch.equal(a.detach(), torch.ones(3))  # the zero MLP never moves
    assert bool((b.detach() < 1).all())  # d = normalised m·rsqrt(r) > 0 ⇒ b decreases
    assert isinstance(opt.param_groups[1]["weights"], str)  # stored as str: state_dict loads with weights_only


@pytest.mark.parametrize("bad", [3, 1.5, ["a"]])
def test_bad_weights_argument_is_a_value_error(bad):
    with pytest.raises(ValueError, match="weights"):
        SmallFCLOpt([torch.zeros(2, requires_grad=True)], weights=bad)


def test_state_dict_from_other_weights_warns(tmp_path):
    one, two = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    save_weights(one, initial_weights(hidden=4, seed=1))
    save_weights(two, initial_weights(hidden=4, seed=2))
    p = torch.nn.Parameter(torch.ones(3))
    opt = SmallFCLOpt([p], weights=one)
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    same = SmallFCLOpt([p], weights=one)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(sd)
    other = SmallFCLOpt([p], weights=two)
    other.param_groups[0]["weights"] = str(one)  # as if the file at that path had been replaced
    other._weights_cache[str(one)] = load_weights(two)
    with pytest.warns(UserWarning, match="bit-exactly"):
        other.load_state_dict(sd)


def test_time_features_follow_the_step_count():
    tf = L.time_features(30.0, torch.float64, torch.device("cpu"))
    expected = torch.tensor([math.tanh(30.0 / tau - 1) for tau in L.TIME_SCALES], dtype=torch.float64)
    torch.testing.assert_close(tf, expected)
