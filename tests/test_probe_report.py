"""The probe report shows every verdict with its explanation and whatever else the
verdict's JSON carries, and never claims a probe that was not fitted."""

from __future__ import annotations

import re

from anira.probes.report import format_summary, probe_sections, suite_html, suite_verdict, verdict_guide
from anira.probes.run import ProbeResult
from anira.probes.suites import SuiteResult

CONSTANT = SuiteResult(name="decision", data={
    # what the decision suite stores when every analysed token exits at one depth
    "mode": "early", "token_set": "answer", "correct_only": True, "n_splits": 5,
    "features": {"static": ["a"], "execution": ["b"]}, "n_tokens": 2371, "sets": {}, "baselines": {},
    "verdict": {"label": "none", "reason": "the halting decision is constant (every analysed token exits at depth 1): "
                "nothing to predict", "metric": "auroc"},
})


def interval(mean, low, high):
    return {"mean": mean, "low": low, "high": high, "se": 0.01, "n_folds": 5}


def result(*suites: SuiteResult, label="ck") -> ProbeResult:
    return ProbeResult(label=label, task="mano", policy="anira-o", timing="online", max_iters=8, n_instances=100,
                       n_rows=700, accuracy=0.9, collection={"seed": 0}, suites=list(suites))


def test_a_probe_that_was_not_fitted_reports_no_rows():
    html = suite_html(CONSTANT)
    assert "0 probe rows" not in html and "0 instances" not in html
    assert "2371 answer tokens: no probe was fitted" in html
    assert "nothing to predict" in html  # the reason sits beside the label


def test_verdict_fields_are_shown_generically():
    """Fields the verdict computation may add (shared information, selection
    controls, flags) appear beside the label without the report knowing them."""
    verdict = {"label": "undetermined", "reason": "the shared part dominates", "metric": "auroc",
               "min_effect": 0.02, "level": 0.95, "margin": interval(0.1, -0.05, 0.25),
               "shared": interval(0.3, 0.2, 0.4), "selection_disagrees": True, "null_control_passed": False,
               "flags": ["solved-only and all-instance verdicts differ"], "selection": {"all_instances": "static"}}
    s = SuiteResult(name="decision", data={"verdict": verdict})
    v = suite_verdict(s)
    assert (v.label, v.reason) == ("undetermined", "the shared part dominates")
    shown = dict((name, value) for name, value, _ in v.evidence)
    assert shown["margin"] == "+0.100 [-0.050, +0.250]" and shown["shared"] == "+0.300 [+0.200, +0.400]"
    assert shown["selection disagrees"] == "yes" and shown["null control passed"] == "no"
    assert shown["flags"] == "solved-only and all-instance verdicts differ"
    assert shown["selection › all instances"] == "static"
    warnings = {name for name, _, warn in v.evidence if warn}
    assert {"selection disagrees", "flags"} <= warnings
    assert "metric" not in shown and "level" not in shown  # rule settings: once, in the guide
    html = suite_html(s)
    assert 'class="badge v-undetermined"' in html and "the shared part dominates" in html
    assert "<li class=warn>selection disagrees: yes</li>" in html


def test_every_verdict_in_the_sections_has_an_explanation():
    attribution = SuiteResult(name="attribution", data={
        "reading": "none", "share_static": 0.5, "share_execution": 0.5, "selected": {"r2": 0.004},
        "bootstrap": {"r2_ci": [0.001, 0.009]}})
    skipped = SuiteResult(name="attribution", status="skipped", reason="the target is constant")
    sections = probe_sections([result(attribution, CONSTANT, label="a"), result(skipped, CONSTANT, label="b")])
    table = sections[0][1]
    verdicts = re.findall(r"<div class=verdict>(.*?)</div>", table)
    assert len(verdicts) == 4
    for v in verdicts:
        why = re.search(r"<span class=why>(.*?)</span>", v)
        assert why and len(why.group(1)) > 10, v
    assert "too little of the depth variation" in table and "the target is constant" in table
    assert "R² of the selected features 0.004, 95% CI [0.001, 0.009]" in table


def test_guide_names_every_label_met_and_the_summary_says_why():
    strange = SuiteResult(name="decision", data={"verdict": {"label": "novel", "reason": "a new rule"}})
    guide = verdict_guide([result(strange)])
    for label in ("static", "execution", "mixed", "none", "undetermined", "novel"):
        assert f'v-{label}"' in guide
    text = format_summary([result(CONSTANT, label="ck-const")])
    assert "why each verdict:" in text and "ck-const: none: the halting decision is constant" in text
