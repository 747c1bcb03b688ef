"""Metrics on hand-computed cases and the edge cases metrics.md asks for."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analyses import metrics as M


def test_maxvio_hand_computed():
    # 4 experts, T*K = 8 assignments: mean 2, max 4 -> (4-2)/2 = 1
    assert M.maxvio([4, 2, 1, 1]) == pytest.approx(1.0)
    assert M.maxvio([2, 2, 2, 2]) == 0.0  # perfectly uniform
    assert M.maxvio([8, 0, 0, 0]) == pytest.approx(3.0)  # all load on one expert: N-1
    assert M.maxvio([5]) == 0.0  # a single expert is trivially balanced
    assert math.isnan(M.maxvio([0, 0, 0]))  # empty layer
    assert M.maxvio([4, 2, 1, 1], mean_load=4) == 0.0


def test_relative_load_balancedness_cv():
    np.testing.assert_allclose(M.relative_load([4, 2, 1, 1]), [2, 1, 0.5, 0.5])
    assert M.balancedness([4, 2, 1, 1]) == pytest.approx(0.5)
    assert M.balancedness([3, 3, 3]) == 1.0
    assert M.balancedness([8, 0, 0, 0]) == pytest.approx(0.25)
    assert M.cv([2, 2, 2, 2]) == 0.0
    assert M.cv([4, 0]) == pytest.approx(1.0)  # std 2, mean 2


def test_normalised_entropy():
    assert M.normalised_entropy([1, 1, 1, 1]) == pytest.approx(1.0)
    assert M.normalised_entropy([5, 0, 0, 0]) == pytest.approx(0.0)
    assert M.normalised_entropy([1, 1, 0, 0]) == pytest.approx(math.log(2) / math.log(4))
    assert math.isnan(M.normalised_entropy([0, 0]))
    assert M.normalised_entropy([3]) == 1.0


def test_mutual_information_and_nmi():
    # two domains, each always routed to its own expert: I = H(domain) = ln 2, NMI = 1
    c = np.array([[10, 0], [0, 10]])
    assert M.mutual_information(c) == pytest.approx(math.log(2))
    assert M.domain_nmi(c) == pytest.approx(1.0)
    # independent: NMI = 0
    assert M.domain_nmi(np.array([[5, 5], [10, 10]])) == pytest.approx(0.0, abs=1e-12)
    # hand-computed mixed case: p = [[.4,.1],[.1,.4]] -> I = .8 ln(1.6) + .2 ln(.4)
    c = np.array([[4, 1], [1, 4]])
    want = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert M.mutual_information(c) == pytest.approx(want)
    assert M.domain_nmi(c) == pytest.approx(want / math.log(2))
    assert M.domain_nmi(np.array([[3, 4, 5]])) == 0.0  # one domain
    assert M.domain_nmi(np.zeros((2, 3))) == 0.0  # empty


def test_bad_shapes():
    with pytest.raises(ValueError, match="1-D"):
        M.maxvio([[1, 2], [3, 4]])
