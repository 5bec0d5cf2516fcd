"""Learning-rate schedules at known steps."""

import math

import pytest

from ghoul.optim.schedule import lr_multiplier


def test_trapezoid_warmup_constant_warmdown():
    values = [lr_multiplier(s, 100, warmup_iters=10, warmdown_iters=20) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == 1.0  # linear warmup reaches the peak at step 9
    assert values[10:80] == [1.0] * 70
    assert values[80] == 1.0 and values[90] == pytest.approx(0.5) and values[99] == pytest.approx(1 / 20)
    assert all(a >= b for a, b in zip(values[80:], values[81:], strict=False))


def test_seed_runs_schedule():
    # the 1.5B recipe: 15,258 steps, warmdown 4,359, no warmup
    assert lr_multiplier(0, 15258, 0, 4359) == 1.0
    assert lr_multiplier(15258 - 4359 - 1, 15258, 0, 4359) == 1.0
    assert lr_multiplier(15257, 15258, 0, 4359) == pytest.approx(1 / 4359)


def test_cosine():
    assert lr_multiplier(5, 105, warmup_iters=5, schedule="cosine") == pytest.approx(1.0)
    assert lr_multiplier(55, 105, warmup_iters=5, schedule="cosine") == pytest.approx(0.5)
    assert lr_multiplier(104, 105, warmup_iters=5, schedule="cosine", min_lr_frac=0.1) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
