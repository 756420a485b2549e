"""Suite options: declared, parsed and checked before any collection work.

A suite may declare its options as ``options = {"key": Option(default, ...)}``
(every built-in suite does). :func:`resolve_options` then turns what a user
gave — ``{"decision": {"n_splits": "3"}, "*": {"correct_only": "false"}}``
from the Python API, or ``--option decision.n_splits=3 --option
'*.correct_only=false'`` from the CLI, which builds that same dict — into
typed values per suite, and raises a one-line :class:`AniraError` for

* an option of a suite that is not being run;
* a key the suite does not declare (a misspelling: ``decision.n_split``);
* a value of the wrong type (``decision.n_splits=abc``) or out of range
  (``decision.n_splits=1``, ``attribution.target=depth``);
* a ``*.key`` that no suite being run declares.

``*.key=value`` sets ``key`` on every suite being run that declares it (and
on suites that declare nothing, which take any key). An explicit
``suite.key`` wins over ``*.key``. Suites without a declaration (third-party
suites written before this existed) receive their options unchecked, as
strings, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from anira.errors import AniraError

WILDCARD = "*"


@dataclass(frozen=True)
class Option:
    """One declared option. The value type is the default's type unless ``parse``
    is given; ``choices`` / ``minimum`` / ``maximum`` bound it."""

    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    parse: Callable[[Any], Any] | None = None  # raises ValueError / AniraError on a bad value

    def read(self, suite: str, key: str, value: Any) -> Any:
        where = f"option {suite}.{key}"
        try:
            out = self.parse(value) if self.parse is not None else parse_as(value, self.default)
        except (ValueError, TypeError) as exc:
            detail = f" ({exc})" if str(exc) and str(exc) != str(value) else ""
            raise AniraError(f"{where}: cannot read {value!r} as {_type_name(self)}{detail}") from None
        except AniraError as exc:
            raise AniraError(f"{where}: {exc}") from None
        if self.choices is not None and out not in self.choices:
            raise AniraError(f"{where}: {value!r} is not one of {', '.join(map(str, self.choices))}")
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            if isinstance(out, float) and not math.isfinite(out):
                raise AniraError(f"{where}: {value!r} is not a finite number")
            if self.minimum is not None and out < self.minimum:
                raise AniraError(f"{where}: {out} is below the minimum {self.minimum:g}")
            if self.maximum is not None and out > self.maximum:
                raise AniraError(f"{where}: {out} is above the maximum {self.maximum:g}")
        return out


def _type_name(option: Option) -> str:
    if option.parse is not None:
        return getattr(option.parse, "expects", "a valid value")
    return {bool: "true/false", int: "an integer", float: "a number"}.get(type(option.default), "text")


def parse_as(value: Any, default: Any) -> Any:
    """``value`` (a string from the CLI, or a Python value) as the default's type."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        low = str(value).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if isinstance(default, int):
        if isinstance(value, bool):
            raise TypeError("a boolean is not an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return int(str(value).strip(), 10)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise TypeError("a boolean is not a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {type(value).__name__}")
        return value.strip()
    return value


def tri_state(value: Any) -> Any:
    """``auto`` / true / false (the ``correct_only`` option)."""
    if isinstance(value, bool) or value == "auto":
        return value
    low = str(value).strip().lower()
    if low == "auto":
        return "auto"
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


tri_state.expects = "auto, true or false"  # type: ignore[attr-defined]


def declared_options(suite: Any) -> Mapping[str, Option] | None:
    """A suite's declared options, or None when it declares none."""
    options = getattr(suite, "options", None)
    return options if isinstance(options, Mapping) else None


def resolve_options(suites: Sequence[Any], given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Per-suite typed options from what was given (module docstring); raises a
    one-line :class:`AniraError` on anything it cannot honour."""
    given = dict(given or {})
    names = [s.name for s in suites]
    out: dict[str, dict[str, Any]] = {name: {} for name in names}
    for suite_name in given:
        if suite_name != WILDCARD and suite_name not in names:
            raise AniraError(f"option for suite {suite_name!r}, which is not being run ({', '.join(names)})")
    for key, value in dict(given.get(WILDCARD, {}) or {}).items():
        takers = [s for s in suites if declared_options(s) is None or key in declared_options(s)]
        if not takers:
            raise AniraError(f"option *.{key}: no suite being run has an option {key!r} "
                             f"({', '.join(names)})")
        for suite in takers:
            out[suite.name][key] = value
    for suite in suites:
        for key, value in dict(given.get(suite.name, {}) or {}).items():
            out[suite.name][key] = value
    for suite in suites:
        declared = declared_options(suite)
        if declared is None:
            continue
        for key, value in list(out[suite.name].items()):
            if key not in declared:
                raise AniraError(f"unknown option {suite.name}.{key}; {suite.name} options: "
                                 f"{', '.join(sorted(declared)) or 'none'}")
            out[suite.name][key] = declared[key].read(suite.name, key, value)
    return out


def parse_cli_options(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["decision.n_splits=3", "*.correct_only=false"]`` -> the dict :func:`resolve_options` takes."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        suite, dot, name = key.strip().partition(".")
        if not sep or not dot or not suite or not name:
            raise AniraError(f"--option must look like SUITE.KEY=VALUE, got {item!r}")
        out.setdefault(suite, {})[name] = value
    return out


# ---------------------------------------------------------------------------------------
# Parsers and the options the attribution and decision suites share
# ---------------------------------------------------------------------------------------


def name_list(value: Any) -> Any:
    """A comma list of names (or a list of them); None stays None (= all)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [str(p).strip() for p in parts if str(p).strip()]
    if not names:
        raise ValueError("no name given")
    return names


name_list.expects = "a comma-separated list of names"  # type: ignore[attr-defined]


def baseline_parts(value: Any) -> str:
    from anira.probes.featureset import parse_baseline

    parts = parse_baseline(value)
    return ",".join(parts) if parts else "none"


baseline_parts.expects = "token, position, size (comma list) or none"  # type: ignore[attr-defined]

TOKEN_SETS = ("auto", "answer", "question", "answer|question", "all")

#: options of both verdict suites (attribution and decision)
VERDICT_OPTIONS: dict[str, Option] = {
    "token_set": Option("auto", "which tokens: auto (the task's: BREVO answer, MANO question), answer, question, "
                        "answer|question, all", choices=TOKEN_SETS),
    "correct_only": Option("auto", "solved instances only: auto (the paper's protocol when the selection null "
                           "control passes, else every instance), true, false", parse=tri_state),
    "features": Option(None, "restrict the candidate features (comma list)", parse=name_list),
    "min_coverage": Option(0.5, "drop a feature defined on fewer analysed tokens than this share",
                           minimum=0.0, maximum=1.0),
    "min_sufficient_share": Option(0.2, "a kind suffices when its unique part is at least this share of what "
                                   "the features add beyond the baseline...", minimum=0.0, maximum=1.0),
    "max_negligible_share": Option(0.1, "...and the other kind's unique part is bounded below this share "
                                   "(also the bound of 'baseline')", minimum=0.0, maximum=1.0),
    "min_unique_share": Option(0.1, "mixed: each kind's unique part is clearly positive and at least this share",
                               minimum=0.0, maximum=1.0),
    "max_claim_share": Option(0.5, "a kind suffices only if the other kind, on its own, explains at most this "
                              "share of the signal", minimum=0.0, maximum=1.0),
    "baseline": Option("token,position", "what every verdict is measured beyond: token, position, size "
                       "(comma list) or none", parse=baseline_parts),
    "null_permutations": Option(3, "independent permutations the selection null control draws; the check "
                                "compares the solved instances with the null pooled over them (1: the single "
                                "draw of earlier versions)", minimum=1),
}


def iteration_list(value: Any) -> str:
    """``all`` or a comma list of iterations (integers, ``h0`` or -1 for the Prelude
    output); the range is checked against the model's D once it is known."""
    text = str(value).strip()
    if text == "all":
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("no iteration given")
    for part in parts:
        if part != "h0":
            int(part, 10)
    return ",".join(parts)


iteration_list.expects = "all, or a comma list of iterations (h0, -1, 0, 1, ...)"  # type: ignore[attr-defined]


def read_options(suite_name: str, declared: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared option's value: the given one read through its Option (so a
    suite run directly with string options parses them the same way), else the
    default. An undeclared key is an error."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise AniraError(f"unknown option {suite_name}.{unknown[0]}; {suite_name} options: {', '.join(sorted(declared))}")
    return {key: (option.read(suite_name, key, given[key]) if key in given else option.default)
            for key, option in declared.items()}
