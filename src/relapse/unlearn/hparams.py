"""What each hyperparameter of a method accepts, declared beside its default.

A method file registers `rules` (name -> Rule) next to its `hparams` defaults; a hyperparameter
without a rule accepts its default's type (a float default: any number; an int: an integer; a
str: any text; a bool: true or false). Config validation checks every grid value against these
rules, so a value the method would refuse fails before any job runs, with the key, the value and
what is allowed. Pure Python: validation imports it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    kind: str                         # number | integer | choice | flag | text
    low: float | None = None
    low_open: bool = False            # low itself is not allowed (> rather than >=)
    high: float | None = None
    choices: tuple = ()

    def allowed(self) -> str:
        if self.kind == "choice":
            return ", ".join(map(str, self.choices))
        if self.kind == "flag":
            return "true or false"
        if self.kind == "text":
            return "text"
        what = "an integer" if self.kind == "integer" else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        return what + (" " + " and ".join(bounds) if bounds else "")

    def accepts(self, value: Any) -> bool:
        if self.kind == "choice":
            return not isinstance(value, bool) and value in self.choices
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "integer" and not float(value).is_integer():
            return False
        if value != value:                                        # nan
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def number(gt: float | None = None, ge: float | None = None, le: float | None = None) -> Rule:
    return Rule("number", gt if gt is not None else ge, gt is not None, le)


def integer(ge: int | None = None) -> Rule:
    return Rule("integer", ge)


def choice(*values) -> Rule:
    return Rule("choice", choices=tuple(values))


FLAG = Rule("flag")


def rule_of_default(default: Any) -> Rule:
    """The rule a hyperparameter without one gets: its default's type."""
    if isinstance(default, bool):
        return FLAG
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    return Rule("text")


def problems(defaults: dict[str, Any], rules: dict[str, Rule], hp: dict[str, Any]):
    """(name, value, allowed) for each value of `hp` that its rule refuses (a list is an axis:
    each of its values is checked)."""
    for name, values in hp.items():
        if name not in defaults:
            continue                  # an unknown name is the caller's error, said separately
        rule = rules.get(name) or rule_of_default(defaults[name])
        for value in values if isinstance(values, list) else [values]:
            if not rule.accepts(value):
                yield name, value, rule.allowed()


def check(method: str, defaults: dict[str, Any], rules: dict[str, Rule], hp: dict) -> None:
    """Raise ValueError for the first value of `hp` that `method` does not accept."""
    for name, value, allowed in problems(defaults, rules, hp):
        raise ValueError(f"{method}: {name} {value!r} is not allowed; allowed: {allowed}")
