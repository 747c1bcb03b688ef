"""Sweeps: a spec file's list of ablations, checked whole before the first forward pass (`load_spec`);
what every sweep's ablations must be, however they were written (`check_names`, `check_repeats`); and the
top-vs-random sweep built in Python (`top_vs_random`). What each ablation disables is select.py's."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from .select import SPEC_KEYS, Ablation, AblationError, experts_label


def load_spec(path: str | Path) -> list[Ablation]:
    """A sweep: a YAML or JSON list of ablations (or {"ablations": [...]}), each a mapping of
    SPEC_KEYS, e.g. `- {name: top4, mode: reroute, top: 4}`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise AblationError(f"spec file {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:  # it said "'utf-8' codec can't decode ...", naming no file
        raise AblationError(f"spec file {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                            f"{e.start}); a sweep is a YAML or JSON list") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - json and yaml raise their own types
        raise AblationError(f"spec file {path}: malformed ({' '.join(str(e).split())})") from None
    if isinstance(data, dict) and set(data) == {"ablations"}:
        data = data["ablations"]
    if not isinstance(data, list) or not data:
        raise AblationError(f"spec file {path}: expected a non-empty list of ablations (or {{ablations: [...]}})")
    out = [_entry(path, i, item) for i, item in enumerate(data)]
    try:
        check_names(out)
        check_repeats(out)
    except AblationError as e:
        raise AblationError(f"spec file {path}: {e}") from None
    return out


def _entry(path: Path, i: int, item) -> Ablation:
    """Entry #i+1 of spec file `path` as an Ablation, or the one line that says what is wrong with it."""
    if not isinstance(item, dict):
        raise AblationError(f"spec file {path}: ablation #{i + 1} is not a mapping")
    unknown = sorted(set(item) - set(SPEC_KEYS))
    if unknown:
        raise AblationError(f"spec file {path}: ablation #{i + 1}: unknown key {unknown[0]!r} "
                            f"(allowed: {', '.join(SPEC_KEYS)})")
    try:
        a = Ablation(**item)
    except (AblationError, TypeError) as e:
        raise AblationError(f"spec file {path}: ablation #{i + 1}: {e}") from None
    where = f"spec file {path}: ablation #{i + 1} ({a.name!r})"
    if a.experts is not None and not any(a.experts.values()):  # as --experts "" (a review): a typo ran a
        # no-op with delta 0; the library's Ablation(experts={}) stays, a baseline control
        raise AblationError(f"{where}: experts names no expert; give layer:expert[+expert],... e.g. 1:3+5")
    if a.layers == []:  # `layers: []` left top/random/shared nothing to act on: a no-op with delta 0
        raise AblationError(f"{where}: layers names no layer; leave it out for every MoE layer, or list some, "
                            "e.g. [1, 3]")
    # a key the selection ignores, refused as the command refuses its flag (__main__.py `unused`; `layers`
    # beside `experts`: Ablation's own check): `seed: 3` beside `top` drew nothing, without a word (a sweep
    # user's tour). The default seed stays: an Ablation written out whole (`vars`, `asdict`) holds `seed: 0`
    if a.seed != 0 and a.random is None:
        raise AblationError(f"{where}: seed {item['seed']!r} seeds the draw of random, and this ablation draws "
                            "nothing")
    return a


def top_vs_random(ns: Iterable[int], *, seeds: Iterable[int] = (0,), mode: str = "reroute",
                  domain: str | None = None, layers=None) -> list[Ablation]:
    """Top vs random as a sweep: for each N, the N most loaded experts of every layer (of `domain` if
    given) and N random experts per layer for each seed (the control). Not DeepSeekMoE's Figure 4,
    which masks each token's own highest-probability experts: that is `Ablation(token_top=R)`
    (pertoken.py; docs/metrics.md, "Ablation")."""
    out = []
    for n in ns:
        out.append(Ablation(top=n, domain=domain, mode=mode, layers=layers))
        out += [Ablation(random=n, seed=s, mode=mode, layers=layers) for s in seeds]
    return out


def check_names(ablations: list[Ablation]) -> None:
    seen = set()
    for a in ablations:
        if a.name in seen:
            raise AblationError(f"two ablations are named {a.name!r}: names must be unique")
        seen.add(a.name)


def check_repeats(ablations: list[Ablation]) -> None:
    """Refuse one ablation given twice under two names: every pass is deterministic, so the second
    computed the first's rows again, and the table and the dashboard's curve held the one measurement
    twice (a sweep user's tour). The same selection however written (`1:5+3` is `1:3+5`; a seed
    counts only where it draws)."""
    seen: dict[str, str] = {}
    for a in ablations:
        key = selection_key(a)
        if key in seen:
            raise AblationError(f"ablations {seen[key]!r} and {a.name!r} are the same ablation "
                                f"({a.default_name()}): each would be computed again under its own name; keep one")
        seen[key] = a.name


def selection_key(a: Ablation) -> str:
    """What an ablation disables and how, as JSON: everything but its name, the experts and layers
    sorted, and the seed only where it draws."""
    d = asdict(a)
    del d["name"]
    if a.random is None:
        del d["seed"]
    if a.experts is not None:
        d["experts"] = experts_label(a.experts)
    return json.dumps(d, sort_keys=True, default=str)
