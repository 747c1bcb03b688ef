"""data.mathgen: every generator's line checked against Python's own arithmetic, parsed from the text."""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from data import mathgen

NUM = r"-?\d+"
FRAC = r"-?(?:\\frac\{\d+\}\{\d+\}|\d+)"


def _q(text: str) -> Fraction:
    """'-\\frac{3}{4}' / '7' / '-7' -> a Fraction."""
    m = re.fullmatch(r"(-?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+))", text)
    assert m, text
    v = Fraction(int(m[2]), int(m[3])) if m[2] else Fraction(int(m[4]))
    return -v if m[1] else v


def _poly(text: str) -> dict[int, Fraction]:
    """'2x^2 - x + 28', '7x^{6} + \\frac{1}{2}x^{4} - 3' -> {power: coefficient}."""
    out: dict[int, Fraction] = {}
    for term in text.replace(" - ", " + -").split(" + "):
        m = re.fullmatch(r"(-?)(\\frac\{\d+\}\{\d+\}|\d+)?(x(?:\^\{?(\d+)\}?)?)?", term)
        assert m and (m[2] or m[3]), (term, text)
        coef = _q(m[2]) if m[2] else Fraction(1)
        power = (int(m[4]) if m[4] else 1) if m[3] else 0
        assert power not in out, text  # one term per power
        out[power] = -coef if m[1] else coef
    return out


def _at(poly: dict[int, Fraction], x) -> Fraction:
    return sum((c * Fraction(x) ** p for p, c in poly.items()), Fraction(0))


def _lines(gen, n: int = 150, seed: str = "mathgen") -> list[str]:
    rng = random.Random(f"{seed}:{gen.__name__}")
    return [gen(rng) for _ in range(n)]


def test_arithmetic_generators_give_the_right_answers():
    for line in _lines(mathgen.multi_step):
        a, b, c, s, c2, v = map(int, re.fullmatch(r"\((\d+) \+ (\d+)\) \* (\d+) = (\d+) \* (\d+) = (\d+)", line).groups())
        assert (s, c2, v) == (a + b, c, (a + b) * c), line
    for line in _lines(mathgen.linear_equation):
        m = re.fullmatch(rf"Solve ({NUM})x ([-+]) (\d+) = ({NUM})\.\n({NUM})x = ({NUM}) ([-+]) (\d+) = ({NUM})\n"
                         rf"x = ({NUM}) / ({NUM}) = ({NUM})", line)
        assert m, line
        a, b, c = int(m[1]), int(m[3]) * (1 if m[2] == "+" else -1), int(m[4])
        rhs = c + int(m[8]) * (1 if m[7] == "+" else -1)
        x = int(m[12])
        assert a * x + b == c and (int(m[5]), int(m[6])) == (a, c) and rhs == c - b == int(m[9]), line
        assert (int(m[10]), int(m[11])) == (rhs, a) and rhs == a * x, line
    for line in _lines(mathgen.series):
        m = re.fullmatch(r"\$\\sum_\{k=1\}\^\{(\d+)\} k(\^\{2\})? = \\frac\{([\d \\cdot]+)\}\{(\d+)\} = (\d+)\$", line)
        assert m, line
        n = int(m[1])
        want = sum(k ** 2 if m[2] else k for k in range(1, n + 1))  # the sum itself, term by term
        factors = [int(f) for f in m[3].split(" \\cdot ")]
        assert int(m[5]) == want == math.prod(factors) // int(m[4]), line
    for line in _lines(mathgen.gcd_lcm):
        m = re.fullmatch(r"\$\\(gcd|operatorname\{lcm\})\((\d+), (\d+)\) = (\d+)\$", line)
        a, b, v = int(m[2]), int(m[3]), int(m[4])
        common = [d for d in range(1, min(a, b) + 1) if a % d == 0 and b % d == 0]
        assert v == (max(common) if m[1] == "gcd" else a * b // max(common)), line
    for line in _lines(mathgen.power):
        base, exp, v = map(int, re.fullmatch(r"\$(\d+)\^\{(\d+)\} = (\d+)\$", line).groups())
        assert v == math.prod([base] * exp), line


def test_fraction_lines_are_right_for_every_operator():
    ops = set()
    for line in _lines(mathgen.fraction_sum):
        m = re.fullmatch(rf"\$({FRAC}) (\+|-|\\cdot) ({FRAC}) = ({FRAC})\$", line)
        assert m, line
        p, q, got = _q(m[1]), _q(m[3]), _q(m[4])
        assert got == {"+": p + q, "-": p - q, "\\cdot": p * q}[m[2]], line
        ops.add(m[2])
    assert ops == {"+", "-", "\\cdot"}  # the product is checked too


def test_algebra_and_calculus_lines_are_right():
    for line in _lines(mathgen.expand):
        m = re.fullmatch(r"Expand \((.+)\)\((.+)\) = (.+)", line)
        f, g, h = _poly(m[1]), _poly(m[2]), _poly(m[3])
        assert all(_at(f, x) * _at(g, x) == _at(h, x) for x in range(-3, 4)), line  # degree 2: 7 points decide
    for line in _lines(mathgen.quadratic):
        m = re.fullmatch(rf"\$(.+) = 0 \\implies \(x ([-+]) (\d+)\)\(x ([-+]) (\d+)\) = 0 \\implies "
                         rf"x = ({NUM})(?: \\text\{{ or \}} x = ({NUM}))?\$", line)
        assert m, line
        poly = _poly(m[1])
        r1, r2 = (-int(m[3]) if m[2] == "+" else int(m[3])), (-int(m[5]) if m[4] == "+" else int(m[5]))
        roots = [int(m[6])] + ([int(m[7])] if m[7] else [])
        assert poly == {2: 1, **({1: -(r1 + r2)} if r1 + r2 else {}), **({0: r1 * r2} if r1 * r2 else {})}, line
        assert sorted({r1, r2}) == roots and all(_at(poly, r) == 0 for r in roots), line  # ascending, each a root
    for line in _lines(mathgen.derivative):
        m = re.fullmatch(r"\$\\frac\{d\}\{dx\}\\left\((.+)\\right\) = (.+)\$", line)
        f, d = _poly(m[1]), _poly(m[2]) if m[2] != "0" else {}
        assert d == {p - 1: c * p for p, c in f.items() if p > 0}, line
    for line in _lines(mathgen.integral):
        m = re.fullmatch(rf"\$\\int_\{{(\d+)\}}\^\{{(\d+)\}} \\left\((.+)\\right\)\\,dx = "
                         rf"\\left\[(.+)\\right\]_\{{(\d+)\}}\^\{{(\d+)\}} = ({FRAC})\$", line)
        assert m, line
        lo, hi, f, anti = int(m[1]), int(m[2]), _poly(m[3]), _poly(m[4])
        assert anti == {p + 1: c / (p + 1) for p, c in f.items()}, line
        # Simpson's rule is exact for polynomials of degree <= 3 (the integrands here)
        simpson = Fraction(hi - lo, 6) * (_at(f, lo) + 4 * _at(f, Fraction(lo + hi, 2)) + _at(f, hi))
        assert _q(m[7]) == simpson == _at(anti, hi) - _at(anti, lo), line


def test_a_math_document_mixes_every_generator_up_to_its_target():
    doc = mathgen.math_document(random.Random("mix"), 4000)
    paras = doc.removesuffix("\n").split("\n\n")
    assert 4000 - 1 <= len(doc) < 4000 + max(map(len, paras)) + 2  # it stops once the target is reached
    kinds = {"Solve", "Expand", "\\implies", "\\frac{d}{dx}", "\\int", "\\sum", "remainder", "^{"}
    assert all(any(k in p for p in paras) for k in kinds)
    sizes = {len(str(mathgen._digits(random.Random(i)))) for i in range(200)}
    assert sizes == {1, 2, 3, 4, 5}  # operands of every length up to five digits
