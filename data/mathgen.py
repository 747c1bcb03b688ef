"""Seeded generator of mathematics text: arithmetic, algebra and LaTeX-style calculus.

Every line is exact (integers and `fractions.Fraction`, never floats), so a model can learn it.

    from data.mathgen import math_document
    text = math_document(random.Random("0:math:17"), target_chars=4000)
"""

from __future__ import annotations

import math
import random
from fractions import Fraction


def _poly(terms: list[tuple[int, int]], var: str = "x", latex: bool = False) -> str:
    """Format sum of coef * var^power (terms with coef 0 dropped, highest power first)."""
    parts: list[str] = []
    for coef, power in sorted(terms, key=lambda t: -t[1]):
        if coef == 0:
            continue
        mag = abs(coef)
        if power == 0:
            body = str(mag)
        else:
            c = "" if mag == 1 else str(mag)
            if power == 1:
                body = f"{c}{var}"
            else:
                body = f"{c}{var}^{{{power}}}" if latex else f"{c}{var}^{power}"
        if not parts:
            parts.append(("-" if coef < 0 else "") + body)
        else:
            parts.append(("- " if coef < 0 else "+ ") + body)
    return " ".join(parts) if parts else "0"


def _frac(q: Fraction, latex: bool = True) -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    if latex:
        return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"
    return f"{sign}{abs(q.numerator)}/{q.denominator}"


def _signed(n: int) -> str:
    return f"+ {n}" if n >= 0 else f"- {-n}"


def _digits(rng: random.Random, max_digits: int = 5) -> int:
    """A positive integer with a uniformly chosen number of digits (1..max_digits)."""
    n = rng.randint(1, max_digits)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def addition(rng: random.Random) -> str:
    a, b = _digits(rng), _digits(rng)
    if rng.random() < 0.5:
        return f"{a} + {b} = {a + b}"
    return f"{a} - {b} = {a - b}"


def multiplication(rng: random.Random) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    return f"{a} * {b} = {a * b}"


def division(rng: random.Random) -> str:
    d = rng.randint(2, 30)
    n = rng.randint(d, 5000)
    q, r = divmod(n, d)
    return f"{n} / {d} = {q} remainder {r}" if r else f"{n} / {d} = {q}"


def multi_step(rng: random.Random) -> str:
    a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(2, 12)
    return f"({a} + {b}) * {c} = {a + b} * {c} = {(a + b) * c}"


def linear_equation(rng: random.Random) -> str:
    a = rng.choice([n for n in range(-9, 10) if n not in (0, 1)])
    x = rng.randint(-20, 20)
    b = rng.randint(-50, 50)
    c = a * x + b
    return (f"Solve {a}x {_signed(b)} = {c}.\n"
            f"{a}x = {c} {_signed(-b)} = {c - b}\n"
            f"x = {c - b} / {a} = {x}")


def expand(rng: random.Random) -> str:
    a, b = rng.randint(1, 5), rng.randint(-9, 9)
    c, d = rng.randint(1, 5), rng.randint(-9, 9)
    lhs = f"({_poly([(a, 1), (b, 0)])})({_poly([(c, 1), (d, 0)])})"
    rhs = _poly([(a * c, 2), (a * d + b * c, 1), (b * d, 0)])
    return f"Expand {lhs} = {rhs}"


def quadratic(rng: random.Random) -> str:
    r1, r2 = rng.randint(-12, 12), rng.randint(-12, 12)
    poly = _poly([(1, 2), (-(r1 + r2), 1), (r1 * r2, 0)], latex=True)
    lo, hi = sorted((r1, r2))
    roots = f"x = {lo}" if lo == hi else f"x = {lo} \\text{{ or }} x = {hi}"
    return f"${poly} = 0 \\implies (x {_signed(-r1)})(x {_signed(-r2)}) = 0 \\implies {roots}$"


def fraction_sum(rng: random.Random) -> str:
    p = Fraction(rng.randint(1, 12), rng.randint(2, 12))
    q = Fraction(rng.randint(1, 12), rng.randint(2, 12))
    op = rng.choice(["+", "-", "\\cdot"])
    val = p + q if op == "+" else p - q if op == "-" else p * q
    return f"${_frac(p)} {op} {_frac(q)} = {_frac(val)}$"


def derivative(rng: random.Random) -> str:
    terms = [(rng.randint(-9, 9), p) for p in sorted(rng.sample(range(0, 7), rng.randint(2, 4)), reverse=True)]
    terms = [t for t in terms if t[0]] or [(1, 2)]
    d = [(c * p, p - 1) for c, p in terms if p > 0]
    return (f"$\\frac{{d}}{{dx}}\\left({_poly(terms, latex=True)}\\right) = "
            f"{_poly(d, latex=True)}$")


def integral(rng: random.Random) -> str:
    terms = [(rng.randint(1, 6), p) for p in sorted(rng.sample(range(0, 4), rng.randint(1, 2)), reverse=True)]
    lo = rng.randint(0, 2)
    hi = lo + rng.randint(1, 3)
    val = sum(Fraction(c, p + 1) * (hi ** (p + 1) - lo ** (p + 1)) for c, p in terms)
    anti = _poly_frac([(Fraction(c, p + 1), p + 1) for c, p in terms])
    return (f"$\\int_{{{lo}}}^{{{hi}}} \\left({_poly(terms, latex=True)}\\right)\\,dx = "
            f"\\left[{anti}\\right]_{{{lo}}}^{{{hi}}} = {_frac(val)}$")


def _poly_frac(terms: list[tuple[Fraction, int]]) -> str:
    parts = []
    for coef, power in terms:
        c = "" if coef == 1 else _frac(coef)
        body = f"{c}x^{{{power}}}" if power > 1 else f"{c}x"
        parts.append(body if not parts else f"+ {body}")
    return " ".join(parts)


def series(rng: random.Random) -> str:
    n = rng.randint(2, 60)
    if rng.random() < 0.5:
        return f"$\\sum_{{k=1}}^{{{n}}} k = \\frac{{{n} \\cdot {n + 1}}}{{2}} = {n * (n + 1) // 2}$"
    return (f"$\\sum_{{k=1}}^{{{n}}} k^{{2}} = \\frac{{{n} \\cdot {n + 1} \\cdot {2 * n + 1}}}{{6}} = "
            f"{n * (n + 1) * (2 * n + 1) // 6}$")


def gcd_lcm(rng: random.Random) -> str:
    g = rng.randint(1, 15)
    a, b = g * rng.randint(1, 20), g * rng.randint(1, 20)
    if rng.random() < 0.5:
        return f"$\\gcd({a}, {b}) = {math.gcd(a, b)}$"
    return f"$\\operatorname{{lcm}}({a}, {b}) = {math.lcm(a, b)}$"


def power(rng: random.Random) -> str:
    base, exp = rng.randint(2, 12), rng.randint(2, 8)
    return f"${base}^{{{exp}}} = {base ** exp}$"


GENERATORS = (addition, multiplication, division, multi_step, linear_equation, expand, quadratic,
              fraction_sum, derivative, integral, series, gcd_lcm, power)


def math_document(rng: random.Random, target_chars: int = 4000) -> str:
    """Problems from every generator, one per paragraph, until the text reaches `target_chars`."""
    parts: list[str] = []
    size = 0
    while size < target_chars:
        line = rng.choice(GENERATORS)(rng)
        parts.append(line)
        size += len(line) + 2
    return "\n\n".join(parts) + "\n"
