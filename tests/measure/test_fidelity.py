"""Fidelity figures on outputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantship.measure.fidelity import FidelityMeter


def test_identical_outputs() -> None:
    m = FidelityMeter(["y"])
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    m.update([x], [x.copy()])
    f = m.result("test")
    o = f.outputs[0]
    assert o.cosine == pytest.approx(1.0) and o.sqnr_db is None and o.max_abs_error == 0.0
    assert o.top1_agreement == 1.0 and f.samples == 4


def test_known_error() -> None:
    ref = np.asarray([[3.0, 4.0], [1.0, 0.0]], np.float32)
    test = np.asarray([[3.0, 4.0 + 0.5], [0.0, 1.0]], np.float32)
    m = FidelityMeter(["y"])
    m.update([ref], [test])
    o = m.result("t").outputs[0]
    cos0 = (9 + 4 * 4.5) / (5 * math.hypot(3, 4.5))
    assert o.cosine == pytest.approx((cos0 + 0.0) / 2)
    assert o.cosine_min == pytest.approx(0.0)
    assert o.sqnr_db == pytest.approx(10 * math.log10(26 / (0.25 + 2)))
    assert o.max_abs_error == pytest.approx(1.0)
    assert o.top1_agreement == 0.5


def test_accumulates_over_batches_and_skips_top1_for_maps() -> None:
    m = FidelityMeter(["map"])
    rng = np.random.default_rng(1)
    for _ in range(3):
        r = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
        m.update([r], [r + 0.01])
    f = m.result("t")
    assert f.samples == 6 and f.outputs[0].top1_agreement is None
    assert f.outputs[0].sqnr_db is not None and f.outputs[0].sqnr_db > 30


def test_shape_mismatch_is_an_error() -> None:
    m = FidelityMeter(["y"])
    with pytest.raises(ValueError, match="shapes differ"):
        m.update([np.zeros((2, 3))], [np.zeros((2, 4))])


def test_sentence_embeddings_pool_over_the_mask_and_keep_neighbours() -> None:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((6, 5, 4)).astype(np.float32)
    mask = np.ones((6, 5), np.int64)
    mask[:, 3:] = 0
    noisy = h.copy()
    noisy[:, 3:] += 100.0  # only masked tokens change: mean pooling must not see it
    meter = FidelityMeter(["last_hidden_state"], pooling="mean")
    meter.update([h[:3]], [noisy[:3]], {"attention_mask": mask[:3]})
    meter.update([h[3:]], [noisy[3:]], {"attention_mask": mask[3:]})
    s = meter.result("test").sentence
    assert s is not None and s.output == "last_hidden_state"
    assert s.cosine == pytest.approx(1.0) and s.same_nearest == 1.0
    cls = FidelityMeter(["last_hidden_state"], pooling="cls")
    swapped = h.copy()
    swapped[:, 0] = h[::-1, 0]  # each sentence's [CLS] vector is another's
    cls.update([h], [swapped], {"attention_mask": mask})
    c = cls.result("test").sentence
    assert c is not None and c.cosine < 0.9 and c.same_nearest is not None and c.same_nearest < 1
    unmasked = FidelityMeter(["last_hidden_state"], pooling="mean")
    unmasked.update([h], [noisy])  # no attention_mask: every token is pooled, and said so
    u = unmasked.result("test").sentence
    assert u is not None and not u.masked and u.cosine < 0.99
    plain = FidelityMeter(["x"])
    plain.update([h], [h])
    assert plain.result("t").sentence is None
    with pytest.raises(ValueError, match="pooling must be"):
        FidelityMeter(["x"], pooling="max")
    bad = FidelityMeter(["x"], pooling="mean")
    with pytest.raises(ValueError, match=r"\(batch, tokens, hidden\)"):
        bad.update([np.zeros(3)], [np.zeros(3)])
