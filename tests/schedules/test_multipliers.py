"""Each multiplier against its formula written out independently here (numpy, whole horizon at once)."""

from __future__ import annotations

import numpy as np
import pytest

from optfit import schedules as S

STEPS_PAST_END = 4


def warmup_part(t: np.ndarray, w: int) -> np.ndarray:
    return (t + 1) / max(w, 1)


def cosine_formula(T: int, W: int, f: float) -> np.ndarray:
    t = np.arange(T + STEPS_PAST_END, dtype=np.float64)
    progress = np.clip((t - W) / (T - W), 0.0, 1.0)
    return np.where(t < W, warmup_part(t, W), f + (1 - f) * (np.cos(np.pi * progress) + 1) / 2)


def linear_formula(T: int, W: int, f: float) -> np.ndarray:
    t = np.arange(T + STEPS_PAST_END, dtype=np.float64)
    return np.where(t < W, warmup_part(t, W), f + (1 - f) * np.clip(1 - (t - W) / (T - W), 0.0, 1.0))


def wsd_formula(T: int, W: int, frac: float, shape: str, f: float) -> np.ndarray:
    t = np.arange(T + STEPS_PAST_END, dtype=np.float64)
    d = round(frac * T)
    s = np.clip((t - (T - d)) / max(d, 1), 0.0, 1.0)
    left = {"linear": 1 - s, "cosine": (1 + np.cos(np.pi * s)) / 2, "sqrt": 1 - np.sqrt(s)}[shape]
    return np.select([t < W, t < T - d, t < T], [warmup_part(t, W), np.ones_like(t), f + (1 - f) * left],
                     default=f)


def values(fn, T: int, **kw) -> np.ndarray:
    return np.array([fn(t, T, **kw) for t in range(T + STEPS_PAST_END)])


@pytest.mark.parametrize("T, W, f", [(10, 0, 0.0), (10, 3, 0.0), (37, 5, 0.1), (2, 1, 0.5), (1, 0, 0.0)])
def test_warmup_cosine_and_linear_equal_their_formulas(T, W, f):
    np.testing.assert_allclose(values(S.warmup_cosine, T, warmup_steps=W, final=f), cosine_formula(T, W, f),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(values(S.warmup_linear, T, warmup_steps=W, final=f), linear_formula(T, W, f),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("shape", S.DECAY_SHAPES)
@pytest.mark.parametrize("T, W, frac, f", [(20, 3, 0.2, 0.0), (50, 0, 0.5, 0.1), (9, 2, 0.0, 0.0), (10, 0, 1.0, 0.0)])
def test_wsd_equals_its_formula(shape, T, W, frac, f):
    got = values(S.wsd, T, warmup_steps=W, decay_fraction=frac, decay_shape=shape, final=f)
    np.testing.assert_allclose(got, wsd_formula(T, W, frac, shape, f), rtol=1e-13, atol=1e-15)


def test_hand_values_and_the_warmup_convention():
    # warmup 1/W on the first step, 1 on its last; decays are 1 on their first step, reach final at T
    assert [S.warmup_cosine(t, 4) for t in range(6)] == pytest.approx([1.0, 0.8535533906, 0.5, 0.1464466094, 0, 0])
    assert [S.warmup_linear(t, 6, warmup_steps=2) for t in range(7)] == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25, 0])
    assert [S.constant(t, warmup_steps=4) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # 10 steps, 4 of them decay (1 − √s, s = 0, ¼, ½, ¾)
    assert [S.wsd(t, 10, warmup_steps=2, decay_fraction=0.4) for t in range(11)] == pytest.approx(
        [0.5, 1, 1, 1, 1, 1, 1, 0.5, 1 - 0.5 ** 0.5, 1 - 0.75 ** 0.5, 0])
    # a WSD whose linear decay covers every step after the warmup is WarmupLinear
    assert values(S.wsd, 20, warmup_steps=4, decay_fraction=0.8, decay_shape="linear") == pytest.approx(
        values(S.warmup_linear, 20, warmup_steps=4))


@pytest.mark.parametrize("call, name", [
    (lambda: S.warmup_cosine(0, 0), "total_steps"),
    (lambda: S.warmup_cosine(0, 10.0), "total_steps"),
    (lambda: S.warmup_cosine(0, True), "total_steps"),
    (lambda: S.warmup_cosine(0, 10, warmup_steps=10), "warmup_steps"),
    (lambda: S.warmup_linear(0, 10, warmup_steps=-1), "warmup_steps"),
    (lambda: S.warmup_cosine(0, 10, final=1.5), "final"),
    (lambda: S.warmup_linear(0, 10, final=float("nan")), "final"),
    (lambda: S.warmup_cosine(-1, 10), "step"),
    (lambda: S.constant(0, warmup_steps=2.5), "warmup_steps"),
    (lambda: S.constant(0, total_steps=3, warmup_steps=3), "warmup_steps"),
    (lambda: S.wsd(0, 10, decay_fraction=-0.1), "decay_fraction"),
    (lambda: S.wsd(0, 10, warmup_steps=5, decay_fraction=0.6), "decay_fraction"),
    (lambda: S.wsd(0, 10, decay_shape="exp"), "decay_shape"),
])
def test_invalid_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b|{name}="):
        call()
