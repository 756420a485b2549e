"""The selection null control with several permutations (``null_permutations`` = K).

Planted tables (``planted_table``: real BREVO / MANO instances, depths from a rule,
correctness from a rule) check that the K draws are distinct, reproducible
permutations within size and role; that the pooled null equals a hand computation
from the per-draw results; that a planted selection artefact fails the check and a
planted real effect passes it with K = 5; and that K = 1 is the single-draw control
as it was before K existed (the draw's random stream and a verbatim copy of the old
check).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
from scipy import stats

import anira
from anira.cli import main
from anira.errors import AniraError
from anira.probes.attribution import AttributionSuite, attribute
from anira.probes.collect import NULL_STREAM, permute_within_roles, planted_table, position_roles, spread
from anira.probes.depth_rules import compile_rule
from anira.probes.options import resolve_options
from anira.probes.report import suite_html
from anira.probes.run import probe_model
from anira.probes.selection import null_passes, pool_null, with_selection_check
from anira.probes.suites import SuiteContext, SuiteResult, collect_requirements, json_safe, resolve_suites
from anira.probes.table import TokenTable
from anira.probes.verdict import NULL_LABELS
from anira.task import collate

D = 6
RANDOM = "1 + 6 * rand()"  # depths that follow no feature


def need_in_degree_and_depth(example, depths):
    """BREVO: solved when every answer step runs at least min(in_degree + dfs_depth, 5)
    iterations (correctness depends on depth and on features of both kinds)."""
    f = example.features
    need = np.minimum(np.nan_to_num(f["in_degree"]) + np.nan_to_num(f["dfs_depth"]), 5)
    rows = example.answer_mask
    return bool(np.all(depths[rows] >= need[rows]))


def need_in_degree(example, depths):
    """BREVO: solved when every answer step runs at least 1 + min(in_degree, 2) iterations."""
    need = 1 + np.minimum(np.nan_to_num(example.features["in_degree"]), 2)
    rows = example.answer_mask
    return bool(np.all(depths[rows] >= need[rows]))


def brevo_table(rule, correct, *, n, difficulties=(3, 4, 5, 6), seed=0, k=1, keep="answer", batch_size=64):
    task = anira.default_registry().task("brevo")()
    return task, planted_table(task, compile_rule(rule, task, D, seed=seed), max_iters=D, n=n, seed=seed,
                               difficulties=difficulties, keep=keep, correct_fn=correct, null_control=True,
                               null_permutations=k, batch_size=batch_size)


@functools.lru_cache(maxsize=None)
def artefact_table(k: int = 5) -> TokenTable:
    """Depths that follow no feature, an instance solved only where it ran deep enough on
    its hard steps: the solved filter makes feature signal (the matrix's "brevo null,
    solved filter" case)."""
    return brevo_table(RANDOM, need_in_degree_and_depth, n=1500, k=k)[1]


def attribution_analysis(seed=0):
    """The attribution suite's analysis as ``with_selection_check`` calls it (no bootstrap)."""
    def analyse(t, correct_only, size_in_baseline, full):
        return attribute(t, correct_only=correct_only, size_in_baseline=size_in_baseline, n_boot=0, seed=seed)
    return analyse


def roles_of(table: TokenTable) -> np.ndarray:
    """The rows' roles as the permutation sees them: 1 answer, 2 question, 0 other."""
    return np.where(table["is_answer"], 1, np.where(table["is_question"], 2, 0))


# ---------------------------------------------------------------------------------------
# (1) the draws: distinct permutations within size and role, reproducible
# ---------------------------------------------------------------------------------------


def test_draws_are_distinct_reproducible_permutations_within_size_and_role():
    # one batch per difficulty (n per size < batch_size), every non-pad position kept,
    # so (difficulty, role) is exactly the set each permutation shuffles within
    _, table = brevo_table(RANDOM, None, n=60, difficulties=(3, 4, 5), k=4, keep="all")
    _, again = brevo_table(RANDOM, None, n=60, difficulties=(3, 4, 5), k=4, keep="all")
    _, other_seed = brevo_table(RANDOM, None, n=60, difficulties=(3, 4, 5), k=4, keep="all", seed=1)
    assert len(table.nulls) == 4 and table.null is table.nulls[0]
    assert table.meta["null_permutations"] == 4
    depth = table["exit_depth"]
    roles = roles_of(table)
    assert set(np.unique(roles)) == {0, 1, 2}
    for j, null in enumerate(table.nulls):
        np.testing.assert_array_equal(null["exit_depth"], again.nulls[j]["exit_depth"])  # reproducible
        np.testing.assert_array_equal(null["correct"], again.nulls[j]["correct"])
        assert not np.array_equal(null["exit_depth"], other_seed.nulls[j]["exit_depth"])  # the seed matters
        np.testing.assert_array_equal(null["instance"], table["instance"])  # the same rows
        assert null.q.argmax(1).tolist() == (null["exit_depth"] - 1).tolist()  # q moved with its depth
        for size in (3, 4, 5):
            for role in (0, 1, 2):
                cell = (table["difficulty"] == size) & (roles == role)
                # a permutation of that cell's depths, never of another size's or role's
                assert sorted(null["exit_depth"][cell]) == sorted(depth[cell]), (j, size, role)
        assert not np.array_equal(null["exit_depth"], depth)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.mean(table.nulls[i]["exit_depth"] != table.nulls[j]["exit_depth"]) > 0.5, (i, j)
    # a sub-table keeps every draw's rows, and a saved table every draw
    rows = np.flatnonzero(table["difficulty"] == 4)
    sub = table.select(rows)
    assert [n["exit_depth"].tolist() for n in sub.nulls] == [n["exit_depth"][rows].tolist() for n in table.nulls]


def test_a_draw_that_repeats_an_earlier_one_is_not_run_again():
    """Every permutation of a fixed depth is the same depths: the model (here the planted
    runner, counted through its correctness rule) runs the null once per batch, not K times."""
    calls = []

    def counted(example, depths):
        calls.append(1)
        return need_in_degree(example, depths)

    for rule, runs in (("3", 2), (RANDOM, 4)):  # the collected depths + draw 0 (+ draws 1, 2)
        calls.clear()
        _, table = brevo_table(rule, counted, n=20, difficulties=(3, 4), k=3)
        assert len(calls) == runs * 20, rule
        assert len(table.nulls) == 3
    for null in table.nulls[1:]:  # (the random rule's draws all ran, and differ)
        assert not np.array_equal(null["exit_depth"], table.null["exit_depth"])


def test_saved_tables_keep_every_draw_and_only_their_own(tmp_path):
    _, table = brevo_table(RANDOM, need_in_degree, n=30, difficulties=(3, 4), k=3)
    loaded = TokenTable.load(table.save(tmp_path / "t"))
    assert len(loaded.nulls) == 3
    for a, b in zip(table.nulls, loaded.nulls):
        np.testing.assert_array_equal(a["exit_depth"], b["exit_depth"])
        np.testing.assert_array_equal(a["correct"], b["correct"])
    table.nulls = table.nulls[:1]  # saving a one-draw table over it leaves no stale draw behind
    assert len(TokenTable.load(table.save(tmp_path / "t")).nulls) == 1


def test_bad_numbers_of_permutations_are_one_line_errors():
    task = anira.default_registry().task("brevo")()
    rule = compile_rule(RANDOM, task, D)
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(AniraError, match="null_permutations must be a positive integer") as err:
            planted_table(task, rule, max_iters=D, n=4, difficulties=(3,), null_control=True, null_permutations=bad)
        assert "\n" not in str(err.value)
    suites = resolve_suites(["attribution", "decision"], anira.default_registry())
    for bad, message in (("0", "0 is below the minimum 1"), ("1.5", "cannot read '1.5' as an integer"),
                         ("x", "cannot read 'x' as an integer")):
        with pytest.raises(AniraError, match=re.escape(message)):
            resolve_options(suites, {"*": {"null_permutations": bad}})
    with pytest.raises(AniraError, match="null_permutations must be a positive integer"):
        with_selection_check(attribution_analysis(), brevo_table(RANDOM, need_in_degree, n=8)[1], "auto", 0)


def test_the_option_reaches_collection_from_the_cli_and_the_python_api(monkeypatch, tmp_path):
    """``--option '*.null_permutations=K'`` and ``options={"*": {...}}`` ask collection for
    K draws (the most any suite asks for); without the solved filter there is no null."""
    suites = resolve_suites(["attribution", "decision"], anira.default_registry())
    context = SuiteContext(max_iters=D)
    for given, expected in (({}, (True, 3)), ({"*": {"null_permutations": "1"}}, (True, 1)),
                            ({"attribution": {"null_permutations": 5}, "decision": {"null_permutations": 2}},
                             (True, 5)),
                            ({"*": {"correct_only": "false", "null_permutations": 4}}, (False, 1))):
        req = collect_requirements(suites, context, resolve_options(suites, given))
        assert (req.null_control, req.null_permutations) == expected, given

    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs["null_permutations"])
        raise AniraError("collection reached")

    monkeypatch.setattr("anira.probes.run.collect", spy)
    task = anira.default_registry().task("brevo")()
    cfg = anira.preset_config("test", vocab_size=task.vocab_size, max_len=48, max_iters=4)
    model = anira.build_model(cfg, "fixed", seed=0)
    with pytest.raises(AniraError, match="collection reached"):
        probe_model(model, task, suites="attribution,decision", options={"*": {"null_permutations": 3}})
    from anira.checkpoint import checkpoint_config, write_checkpoint

    config = checkpoint_config(step=1, model_config=cfg, policy="fixed", policy_options={}, task="brevo",
                               task_options={"train": [3, 5], "test_id": [3, 5], "test_ood": [6, 7]}, train={})
    ckpt = write_checkpoint(tmp_path / "ck", config, model)
    assert main(["probe", str(ckpt), "--suite", "attribution,decision", "--option", "*.null_permutations=2"]) == 2
    assert asked == [3, 2]


# ---------------------------------------------------------------------------------------
# (2) the pooled null, by hand
# ---------------------------------------------------------------------------------------


def test_pooled_null_equals_a_hand_computation_from_the_draws():
    k = 5
    table = artefact_table(k)
    analyse = attribution_analysis()
    result, _ = with_selection_check(analyse, table, "auto", k)
    sel = result["selection"]
    solved = analyse(table, True, False, False)[0]["verdict"]
    assert sel["verdicts"]["solved"]["label"] == solved["label"] and solved["label"] not in NULL_LABELS
    # every draw is the analysis of its own null table under the solved filter
    draws = [analyse(null, True, True, False)[0]["verdict"]["beyond"] for null in table.nulls]
    assert sel["null_permutations"] == k and [d["draw"] for d in sel["null_draws"]] == list(range(k))
    for row, want in zip(sel["null_draws"], draws):
        assert row["beyond"] == {"mean": want["mean"], "se": want["se"], "n_folds": want["n_folds"]}
    means = np.array([d["mean"] for d in draws])
    ses = np.array([d["se"] for d in draws])
    assert len(set(means.round(6))) == k  # the draws differ
    mean = sum(means) / k
    within = sum(ses ** 2) / k
    between = sum((means - mean) ** 2) / (k - 1)
    se = np.sqrt(within + between / k)
    pooled = sel["null_pooled"]
    assert pooled["mean"] == pytest.approx(mean, rel=1e-12)
    assert pooled["se"] == pytest.approx(se, rel=1e-12)
    assert pooled["between_sd"] == pytest.approx(np.sqrt(between), rel=1e-12)
    assert pooled["within_se"] == pytest.approx(np.sqrt(within), rel=1e-12)
    # the check's bound: S − N − t · sqrt(s_S² + se²), t on the Welch–Satterthwaite df
    s = solved["beyond"]
    fold, spread_part = s["se"] ** 2 + within, between / k
    df_fold = min(s["n_folds"], min(d["n_folds"] for d in draws)) - 1
    df = (fold + spread_part) ** 2 / (fold ** 2 / df_fold + spread_part ** 2 / (k - 1))
    low = (s["mean"] - mean) - stats.t.ppf(0.975, df) * np.sqrt(s["se"] ** 2 + se ** 2)
    assert sel["null_bound"]["df"] == pytest.approx(df, rel=1e-12)
    assert sel["null_bound"]["low"] == pytest.approx(low, rel=1e-12)
    assert f"difference ≥ {low:+.3f} at 95 %" in sel["null_check"]
    assert f"{mean:+.3f} ± {se:.3f} on the null" in sel["null_check"]
    assert sel["null_passes"] is bool(low > 0 and mean <= 0.5 * s["mean"])


def test_pool_null_formula_on_known_numbers():
    one = pool_null([(0.02, 0.005, 20)])
    assert (one["mean"], one["se"], one["between_sd"], one["n_draws"]) == (0.02, 0.005, 0.0, 1)
    three = pool_null([(0.01, 0.003, 20), (0.03, 0.004, 10), (0.02, 0.005, 20)])
    # mean 0.02; within (9 + 16 + 25)e-6 / 3; between ((-0.01)² + 0.01² + 0) / 2 = 1e-4
    assert three["mean"] == pytest.approx(0.02)
    assert three["se"] == pytest.approx(np.sqrt(50e-6 / 3 + 1e-4 / 3))
    assert three["between_sd"] == pytest.approx(0.01) and three["n_folds"] == 10
    with pytest.raises(AniraError):
        pool_null([])


# ---------------------------------------------------------------------------------------
# (3) planted truth with K = 5
# ---------------------------------------------------------------------------------------


def test_planted_selection_artefact_fails_with_five_permutations():
    """Depths follow no feature; an instance is solved only where it ran deep enough on
    its hard steps. The solved instances show feature signal the filter made: the
    pooled null shows as much, the check fails and the headline reads every instance."""
    table = artefact_table(5)
    data = AttributionSuite().run(table, SuiteContext(max_iters=D, timing="planted",
                                         options={"null_permutations": 5, "n_boot": 0})).data
    sel = data["selection"]
    assert sel["verdicts"]["solved"]["label"] not in NULL_LABELS  # the artefact the check must catch
    assert sel["null_permutations"] == 5 and sel["null_pooled"]["n_draws"] == 5
    assert sel["null_passes"] is False and sel["headline"] == "all"
    assert "mean of 5 permutations" in sel["null_check"]
    assert any("null control" in f and "fails" in f for f in data["flags"])
    assert data["verdict"]["label"] in NULL_LABELS
    # the report shows every draw's value and the pool
    html = suite_html(SuiteResult(name="attribution", data=data))
    for row in sel["null_draws"]:
        assert f"<td>{row['beyond']['mean']:.3f}</td>" in html
    assert f"<td>{sel['null_pooled']['mean']:.3f}</td><td>{sel['null_pooled']['se']:.3f}</td>" in html


def test_planted_real_effect_passes_with_five_permutations():
    """Depth follows in-degree (a static rule) and correctness depends on depth and
    in-degree: the solved instances show far more than the filter makes."""
    _, table = brevo_table("1 + in_degree + 1.6 * (rand() - 0.5)", need_in_degree, n=300, k=5)
    data = AttributionSuite().run(table, SuiteContext(max_iters=D, timing="planted",
                                                      options={"null_permutations": 5, "n_boot": 0})).data
    sel = data["selection"]
    assert 0.3 < sel["solved_share"] < 0.95  # the filter does select
    assert sel["null_pooled"]["n_draws"] == 5
    assert sel["null_passes"] is True and sel["headline"] == "solved"
    assert data["verdict"]["label"] == "static"


# ---------------------------------------------------------------------------------------
# (4) K = 1 is the control as it was
# ---------------------------------------------------------------------------------------


def _one_draw(table: TokenTable) -> TokenTable:
    """``table`` as if collected with one null permutation (its first draw)."""
    out = table.select(np.arange(len(table)))
    out.nulls = out.nulls[:1]
    return out


def _null_passes_before(null, solved):
    """``null_passes`` verbatim as it was before ``null_permutations`` (commit 5f1bce3)."""
    solved_v = (solved or {}).get("verdict") or {}
    null_v = null.get("verdict") or {}
    if solved_v.get("label") in NULL_LABELS:
        return True, f"the solved instances read '{solved_v.get('label')}': the filter made no signal visible"
    s_b, n_b = solved_v.get("beyond") or {}, null_v.get("beyond") or {}
    values = [s_b.get("mean"), s_b.get("se"), n_b.get("mean"), n_b.get("se")]
    if any(v is None or not np.isfinite(v) for v in values):
        return False, (f"the solved instances read '{solved_v.get('label')}' and the null reads "
                       f"'{null_v.get('label')}', with nothing to compare them by")
    s_mean, s_se, n_mean, n_se = (float(v) for v in values)
    df = max(1, min(int(s_b.get("n_folds", 2)), int(n_b.get("n_folds", 2))) - 1)
    low = (s_mean - n_mean) - float(stats.t.ppf(0.975, df)) * float(np.hypot(s_se, n_se))
    metric = solved_v.get("metric", "")
    text = (f"the features add {s_mean:+.3f} {metric} beyond the baseline on solved instances and {n_mean:+.3f} "
            f"on the null under the same filter (difference ≥ {low:+.3f} at 95 %)")
    if low > 0 and n_mean <= 0.5 * s_mean:
        return True, text + ": more than the filter alone makes"
    return False, text + ": the filter alone could make it"


def test_one_permutation_draws_the_stream_it_always_drew():
    """Draw 0 (all of K = 1) permutes each batch with ``default_rng([seed, k, NULL_STREAM])``,
    as the single null always did; more draws leave it as it is."""
    seed, ks, n, batch = 3, (3, 4), 50, 16  # several batches per size
    task, one = brevo_table(RANDOM, need_in_degree, n=n, difficulties=ks, seed=seed, batch_size=batch)
    _, three = brevo_table(RANDOM, need_in_degree, n=n, difficulties=ks, seed=seed, batch_size=batch, k=3)
    assert len(one.nulls) == 1
    for name in ("exit_depth", "correct", "expected_depth", "instance", "position"):
        np.testing.assert_array_equal(one.null[name], three.nulls[0][name])
    np.testing.assert_array_equal(one.null.q, three.nulls[0].q)
    # replay the collection loop with the old stream
    rule = compile_rule(RANDOM, task, D, seed=seed)
    want = []
    for k, n_k in spread(n, list(ks)).items():
        rng = np.random.default_rng([seed, k])
        null_rng = np.random.default_rng([seed, k, NULL_STREAM])
        left = n_k
        while left:
            examples = [task.sample(k, rng, split="test") for _ in range(min(batch, left))]
            b = collate(examples)
            forced = np.ones(b.tokens.shape, dtype=np.int64)
            for i, e in enumerate(examples):
                forced[i, : len(e)] = rule(e)
            q = np.eye(D, dtype=np.float32)[forced - 1]
            depth, _ = permute_within_roles(forced, q, position_roles(b), null_rng)
            real = np.arange(b.tokens.shape[1])[None, :] < b.lengths[:, None]
            want.append(depth[b.answer_mask & real])
            left -= len(examples)
    np.testing.assert_array_equal(one.null["exit_depth"], np.concatenate(want))


@pytest.mark.parametrize("case", ["artefact", "real effect"])
def test_one_permutation_is_the_check_it_was(case):
    if case == "artefact":  # the check fails
        table = artefact_table(5)
    else:  # the check passes
        table = brevo_table("1 + in_degree + 1.6 * (rand() - 0.5)", need_in_degree, n=300, k=3)[1]
    analyse = attribution_analysis()
    default, notes = with_selection_check(analyse, table, "auto")
    one, _ = with_selection_check(analyse, table, "auto", 1)
    assert json_safe(default) == json_safe(one)  # (NaN != NaN: compare the JSON)
    solved = analyse(table, True, False, False)[0]
    null = analyse(table.null, True, True, False)[0]
    before = _null_passes_before(null, solved)
    assert null_passes(null, solved) == before == null_passes([null], solved)
    sel = one["selection"]
    assert (sel["null_passes"], sel["null_check"]) == before
    assert sel["null_permutations"] == 1 and len(sel["null_draws"]) == 1
    assert not any("permutations" in note for note in notes)
    # the suites' default asks for 3 draws; a table collected with one pools it, and says so
    suite = AttributionSuite().run(_one_draw(table),
                                   SuiteContext(max_iters=D, timing="planted", options={"n_boot": 0}))
    assert suite.data["selection"]["null_permutations"] == 1
    assert (suite.data["selection"]["null_passes"], suite.data["selection"]["null_check"]) == before
    assert any("3 null permutations asked for, the table holds 1" in note for note in suite.notes)
    # and on numbers that sit on the boundaries
    for s_mean, s_se, n_mean, n_se, s_folds, n_folds in [(0.026, 0.0013, 0.012, 0.0065, 20, 20),
                                                          (0.02, 0.001, 0.01, 0.004, 5, 20),
                                                          (0.02, 0.002, 0.011, 0.003, 1, 1),
                                                          (0.02, float("nan"), 0.01, 0.004, 20, 20)]:
        sv = {"verdict": {"label": "static", "metric": "R²",
                          "beyond": {"mean": s_mean, "se": s_se, "n_folds": s_folds}}}
        nv = {"verdict": {"label": "none", "beyond": {"mean": n_mean, "se": n_se, "n_folds": n_folds}}}
        assert null_passes(nv, sv) == _null_passes_before(nv, sv)
