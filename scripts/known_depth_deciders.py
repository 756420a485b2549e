#!/usr/bin/env python3
"""Known depth: do deciders exit where a frozen network needs them to? (docs/deciders.md,
"A depth we know").

The right depth per token is measured on the network itself. For each answer position i
of held-out instances (`anira eval`'s, same seeds), the model is run with every token
forced to exit at depth d, d = 1..D (as scripts/forced_depth_accuracy.py does), and

    n_i = the smallest d such that the argmax prediction at i is correct at every d' >= d

(undefined when it is wrong at D). Every other token is forced to the same depth, so n_i
is the depth this network needs for token i when its context runs equally deep; under a
decider the context runs at the decider's depths, which the network was trained with but
n_i does not see.

Three further readings: n_i in the decider's own context (only the answer positions forced,
every other token at the decider's depth), n_i with "right" read as p(right token) >= 0.9,
and the loss-optimal depth argmin_d CE_i(d) + c·d, c being what the regulariser charges one
answer token per iteration (``iteration_price``).

``follow``: the checkpoints' own deciders' exit depths (inference rule) against n_i:
Spearman, the share of tokens exiting before n_i (premature), at it, after it (wasted
iterations), mean excess depth; pooled and within each difficulty value.

``train``: freeze the checkpoint's network, give it a freshly initialised decider of the
same policy, and train only the decider with the project's loss (CE + the policy's γ·KL to
its prior, γ and prior from the checkpoint) through `anira train`'s own loop
(`train.init_network_from`, `train.freeze_network`, `train.straight_through`), on fresh
training instances; at a few steps the decider's exit depths are read against n_i.

    python scripts/known_depth_deciders.py follow checkpoints/brevo-anira-o checkpoints/brevo-anira-e --n 128 \\
        --json docs/data/known_depth_deciders.json
    python scripts/known_depth_deciders.py train checkpoints/brevo-anira-o --straight-through running \\
        --steps 300 --batch-size 64 --json docs/data/known_depth_deciders.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import anira
from anira import checkpoint as ckpt
from anira.evaluate import eval_instances, spearman
from anira.task import collate
from anira.training import Callback, RunSpec, TrainConfig, train


# ---------------------------------------------------------------------------------------
# the needed depth
# ---------------------------------------------------------------------------------------


def forced_depth_outputs(model: Any, tokens: torch.Tensor, *, only: torch.Tensor | None = None,
                         others: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """With every token forced to exit at depth d (row d-1) -- or only the positions ``only``
    (b, p) bool, every other token exiting at ``others`` (b, p) -- the (D, b, p) argmax
    predictions and the (D, b, p) cross-entropy of the next token (0 at the last position)."""
    preds, nlls = [], []
    with torch.no_grad():
        for d in range(1, model.cfg.max_iters + 1):
            depths = torch.full(tokens.shape, d) if only is None else torch.where(only, d, others)
            logits = model(tokens, exit_depths=depths).logits.float()
            nll = torch.zeros(tokens.shape)
            nll[:, :-1] = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
            preds.append(logits.argmax(-1).numpy())
            nlls.append(nll.numpy())
    return np.stack(preds), np.stack(nlls)


def correct_by_depth(predictions: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """(D, b, p) bool: the prediction at position i is token i+1 (False at the last position)."""
    correct = np.zeros(predictions.shape, dtype=bool)
    correct[:, :, :-1] = predictions[:, :, :-1] == np.asarray(tokens)[None, :, 1:]
    return correct


def needed_depth(correct: np.ndarray) -> np.ndarray:
    """(D, ...) bool -> (...) int: the smallest d with ``correct`` at every d' >= d; 0 where
    wrong at D (undefined). A token correct at d but wrong deeper needs the deeper depth."""
    D = correct.shape[0]
    # correct at every depth from row r on, for each r (a suffix "and")
    from_here = np.flip(np.logical_and.accumulate(np.flip(correct, 0), axis=0), 0)
    count = from_here.sum(0)  # = D - n + 1 where defined
    return np.where(count > 0, D - count + 1, 0)


#: a second, stricter reading of "right": the network gives the right token at least this
#: probability (the training loss keeps paying for depth after the argmax is right)
CONFIDENT = 0.9


def iteration_price(policy: Any, batches: list[Any]) -> float | None:
    """What one more iteration of one answer token costs in the training loss, in units of
    that token's cross-entropy: the loss is CE averaged over the ``loss_mask`` positions plus
    γ·KL(q‖p) averaged over all tokens, and for a token sure of its depth d, KL = d·ln b +
    const; so the price is γ·ln b · (loss positions / tokens), here over ``batches`` (the
    held-out instances, uniform over the training range as training batches are). None for
    a policy without the geometric prior."""
    if not hasattr(policy, "prior_base"):
        return None
    loss = sum(int(b.loss_mask.sum()) for b in batches)
    tokens = sum(int(b.lengths.sum()) for b in batches)
    return float(policy.gamma * np.log(policy.prior_base) * loss / tokens)


def loss_optimal_depth(nll: np.ndarray, price: float) -> np.ndarray:
    """(D, t) cross-entropy by depth -> (t,) the depth d minimising CE(d) + price·d: where the
    training objective would stop the token if its depth alone changed (every other token at
    the same depth, as for n_i)."""
    return np.argmin(nll + price * np.arange(1, nll.shape[0] + 1)[:, None], axis=0) + 1


@dataclass
class Tokens:
    """The answer positions of a checkpoint's held-out instances."""

    difficulty: np.ndarray  # (t,) int
    needed: np.ndarray  # (t,) int, 0 = undefined
    confident: np.ndarray  # (t,) int: the same with "p(right token) >= CONFIDENT" for "right"
    optimal: np.ndarray | None  # (t,) int: argmin_d CE(d) + price·d (loss_optimal_depth); None: no prior
    price: float | None  # what the regulariser charges an answer token per iteration, in CE units
    correct: np.ndarray  # (D, t) bool: right with every token at depth d
    nll: np.ndarray  # (D, t): cross-entropy of the answer token with every token at depth d
    instance: np.ndarray  # (t,) int: which instance (index into the instance lists below)
    first: np.ndarray  # (t,) bool: the instance's first answer position (MANO: the value; BREVO: the first node)
    last: np.ndarray  # (t,) bool: the instance's last answer position, the one predicting the closing <eos>
    batches: list[tuple]  # (difficulty, tokens, answer mask, examples, collated Batch)
    solved_full_depth: np.ndarray  # (instances,) bool: exact match with every token at depth D


def held_out_tokens(model: Any, task: Any, n: int, seed: int) -> Tokens:
    """n_i for every answer position of ``n`` test instances per in-distribution difficulty."""
    lo, hi = task.ranges.test_id
    diff, need, conf, corr, nlls, inst, first, last, batches, solved = [], [], [], [], [], [], [], [], [], []
    offset = 0
    for k in range(lo, hi + 1):
        examples = eval_instances(task, k, n, seed)  # the instances `anira eval --seed` scores
        batch = collate(examples, pad_id=task.tokenizer.pad_id)
        tokens = torch.from_numpy(batch.tokens)
        preds, nll = forced_depth_outputs(model, tokens)
        correct = correct_by_depth(preds, batch.tokens)
        needed = needed_depth(correct)
        confident = needed_depth(nll <= -np.log(CONFIDENT))
        rows, cols = np.nonzero(batch.answer_mask)
        diff.append(np.full(len(rows), k))
        need.append(needed[rows, cols])
        conf.append(confident[rows, cols])
        corr.append(correct[:, rows, cols])
        nlls.append(nll[:, rows, cols])
        inst.append(rows + offset)
        first.append(cols == np.argmax(batch.answer_mask, axis=1)[rows])
        width = batch.answer_mask.shape[1]
        last.append(cols == (width - 1 - np.argmax(batch.answer_mask[:, ::-1], axis=1))[rows])
        solved.append(np.array([task.score(e, preds[-1, j]) for j, e in enumerate(examples)]))
        batches.append((k, tokens, batch.answer_mask, examples, batch))
        offset += len(examples)
    nll_all = np.concatenate(nlls, 1)
    price = iteration_price(model.policy, [b[-1] for b in batches])
    optimal = None if price is None else loss_optimal_depth(nll_all, price)
    return Tokens(np.concatenate(diff), np.concatenate(need), np.concatenate(conf), optimal, price,
                  np.concatenate(corr, 1), nll_all, np.concatenate(inst), np.concatenate(first),
                  np.concatenate(last), batches,
                  np.concatenate(solved))


def policy_depths(model: Any, task: Any, held: Tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's own (inference-rule) exit depths and per-token correctness at the answer
    positions of ``held``, and exact match per instance."""
    was_training = model.training
    model.eval()
    depth, correct, solved = [], [], []
    try:
        with torch.no_grad():
            for _, tokens, answer, examples, _ in held.batches:
                out = model(tokens)
                pred = out.logits.argmax(-1).numpy()
                ok = correct_by_depth(pred[None], tokens.numpy())[0]
                rows, cols = np.nonzero(answer)
                depth.append(out.exit_depth.numpy()[rows, cols])
                correct.append(ok[rows, cols])
                solved.append(np.array([task.score(e, pred[j]) for j, e in enumerate(examples)]))
    finally:
        model.train(was_training)
    return np.concatenate(depth), np.concatenate(correct), np.concatenate(solved)


def needed_depth_in_own_context(model: Any, held: Tokens) -> tuple[np.ndarray, np.ndarray | None]:
    """n_i again, forcing only the answer positions to depth d while every other token exits
    at the model's own (inference-rule) depth: the depth token i needs in the context its
    decider builds (a decider-dependent reading; n_i is the decider-free one); and the
    loss-optimal depth in that context (None without a prior)."""
    model.eval()
    needed, nlls = [], []
    with torch.no_grad():
        for _, tokens, answer, _, _ in held.batches:
            own = model(tokens).exit_depth
            preds, nll = forced_depth_outputs(model, tokens, only=torch.from_numpy(answer), others=own)
            rows, cols = np.nonzero(answer)
            needed.append(needed_depth(correct_by_depth(preds, tokens.numpy()))[rows, cols])
            nlls.append(nll[:, rows, cols])
    optimal = None if held.price is None else loss_optimal_depth(np.concatenate(nlls, 1), held.price)
    return np.concatenate(needed), optimal


# ---------------------------------------------------------------------------------------
# exit depth against the needed depth
# ---------------------------------------------------------------------------------------


def _r(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def follow_stats(exit_depth: np.ndarray, needed: np.ndarray, correct: np.ndarray | None = None) -> dict[str, Any]:
    """How exit depths follow n over the tokens whose n is defined (needed > 0)."""
    defined = needed > 0
    e, n = exit_depth[defined].astype(float), needed[defined].astype(float)
    stats: dict[str, Any] = {"tokens": int(defined.sum()), "undefined": int((~defined).sum())}
    if not defined.any():
        return stats
    premature = e < n
    stats.update({
        "mean_needed": _r(n.mean()), "mean_exit": _r(e.mean()), "spearman": _r(spearman(e, n)),
        "premature": _r(premature.mean()), "at_needed": _r((e == n).mean()), "wasted": _r((e > n).mean()),
        "mean_excess": _r((e - n).mean()), "mean_wasted_iterations": _r(np.maximum(e - n, 0).mean()),
    })
    if correct is not None:  # was the token right at the policy's own depths?
        c = correct[defined]
        stats["token_acc_premature"] = _r(c[premature].mean()) if premature.any() else None
        stats["token_acc_not_premature"] = _r(c[~premature].mean()) if (~premature).any() else None
    return stats


def by_difficulty(exit_depth: np.ndarray, held: Tokens, correct: np.ndarray | None = None, *,
                  confident: bool = False, keep: np.ndarray | None = None) -> dict[str, Any]:
    """follow_stats within each difficulty value, over the answer positions ``keep`` marks (all by default)."""
    needed = held.confident if confident else held.needed
    keep = np.ones(len(needed), dtype=bool) if keep is None else keep
    return {str(k): follow_stats(exit_depth[sel], needed[sel], None if correct is None else correct[sel])
            for k in np.unique(held.difficulty) for sel in [(held.difficulty == k) & keep]}


def needed_summary(model: Any, held: Tokens) -> dict[str, Any]:
    D = model.cfg.max_iters
    hist = np.bincount(held.needed, minlength=D + 1)
    defined = held.needed > 0
    depths = np.arange(1, D + 1)[:, None]
    # right at some depth below n_i (or below D where n_i is undefined), then wrong again
    flipped = (held.correct & (depths < np.where(defined, held.needed, D + 1))).any(0)
    nll = held.nll[:, defined]
    return {
        "answer_tokens": int(len(held.needed)), "undefined": int(hist[0]),
        "histogram_1_to_D": [int(c) for c in hist[1:]],
        "right_then_wrong": {"defined": int(flipped[defined].sum()), "undefined": int(flipped[~defined].sum())},
        # the loss goes on falling after the argmax is right: what a decider trained on CE sees
        "mean_ce_by_depth": [_r(v) for v in nll.mean(1)],
        "mean_ce_at_needed": _r(np.take_along_axis(nll, held.needed[defined][None] - 1, 0).mean()),
        "iteration_price": _r(held.price) if held.price is not None else None,
        # one depth for every answer token: what a decider that cannot tell tokens apart would pick
        "one_depth_loss_optimal": None if held.price is None else
        int(np.argmin(held.nll.mean(1) + held.price * np.arange(1, D + 1)) + 1),
        "loss_optimal_histogram_1_to_D": None if held.optimal is None else
        [int(c) for c in np.bincount(held.optimal, minlength=D + 1)[1:]],
        "confident_p": CONFIDENT, "confident_undefined": int((held.confident == 0).sum()),
        "confident_histogram_1_to_D": [int(c) for c in np.bincount(held.confident, minlength=D + 1)[1:]],
        "mean_needed_by_difficulty": {str(k): _r(held.needed[(held.difficulty == k) & (held.needed > 0)].mean())
                                      for k in np.unique(held.difficulty)},
        "exact_match_full_depth": _r(held.solved_full_depth.mean()),
    }


def follow(path: str, n: int, seed: int) -> dict[str, Any]:
    model, task = anira.load(path)
    held = held_out_tokens(model, task, n, seed)
    depth, correct, solved = policy_depths(model, task, held)
    own, own_optimal = needed_depth_in_own_context(model, held)
    D = model.cfg.max_iters
    return {
        "policy": model.policy.name, "D": model.cfg.max_iters, "n_per_difficulty": n, "seed": seed,
        "needed": needed_summary(model, held), "exact_match_policy": _r(solved.mean()),
        "pooled": follow_stats(depth, held.needed, correct), "by_difficulty": by_difficulty(depth, held, correct),
        "pooled_confident": follow_stats(depth, held.confident),
        "by_difficulty_confident": by_difficulty(depth, held, confident=True),
        "pooled_loss_optimal": None if held.optimal is None else follow_stats(depth, held.optimal),
        "by_answer_index": {"first": follow_stats(depth[held.first], held.needed[held.first], correct[held.first]),
                            "rest": follow_stats(depth[~held.first], held.needed[~held.first], correct[~held.first]),
                            "last": follow_stats(depth[held.last], held.needed[held.last], correct[held.last]),
                            "not_last": follow_stats(depth[~held.last], held.needed[~held.last],
                                                     correct[~held.last])},
        # the closing <eos> is predicted at the same depth whatever the difficulty; without it
        # each difficulty's row reads the answer tokens alone (DEPO: one per query)
        "by_difficulty_not_last": by_difficulty(depth, held, correct, keep=~held.last),
        "own_context": {"histogram_1_to_D": [int(c) for c in np.bincount(own, minlength=D + 1)[1:]],
                        "pooled": follow_stats(depth, own, correct),
                        "first": follow_stats(depth[held.first], own[held.first], correct[held.first]),
                        "rest": follow_stats(depth[~held.first], own[~held.first], correct[~held.first]),
                        "loss_optimal": None if own_optimal is None else follow_stats(depth, own_optimal)},
    }


# ---------------------------------------------------------------------------------------
# a fresh decider on the frozen network
# ---------------------------------------------------------------------------------------


def decider_spec(path: str, straight_through: str, *, steps: int, batch_size: int, seed: int,
                 warmup_steps: int) -> RunSpec:
    """The checkpoint's own recipe (task, model, policy and its γ / prior, LR, decider LR
    multiplier, weight decay, clipping), on the CPU, with its network loaded and frozen and
    a fresh decider trained on fresh instances of seed ``seed``."""
    run = ckpt.read_config(path)["run"]
    cfg = dict(run["train"])
    cfg.update(
        steps=steps, batch_size=batch_size, seed=seed, warmup_steps=warmup_steps, straight_through=straight_through,
        init_network_from=str(ckpt.resolve(path)), freeze_network=True, full_depth_steps=0, reg_warmup_steps=0,
        device="cpu", compile=False, amp=False, num_workers=0, data_pool=0, pad_to_max=False,
        log_every=1, eval_every=0, eval_examples=4, eval_ood=False, checkpoint_every=0,
        keep_checkpoints=1, stop_at_acc=0.0,
    )
    return RunSpec.from_dict({**run, "train": TrainConfig.from_dict(cfg).to_dict()})


class ReadDepths(Callback):
    """At chosen steps (0: the fresh decider) reads the training model against n_i."""

    def __init__(self, task: Any, held: Tokens, at: list[int]) -> None:
        self.task, self.held, self.at = task, held, set(at)
        self.records: list[dict[str, Any]] = []
        self.train_records: dict[int, dict[str, Any]] = {}
        self.t0 = time.perf_counter()

    def read(self, model: Any, step: int) -> None:
        depth, correct, solved = policy_depths(model, self.task, self.held)
        self.records.append({"step": step, "elapsed_s": round(time.perf_counter() - self.t0, 1),
                             "exact_match": _r(solved.mean()),
                             **follow_stats(depth, self.held.needed, correct),
                             "confident": follow_stats(depth, self.held.confident),
                             "loss_optimal": follow_stats(depth, self.held.optimal),
                             "mean_exit_by_difficulty": {str(k): _r(depth[self.held.difficulty == k].mean())
                                                         for k in np.unique(self.held.difficulty)}})

    def on_start(self, trainer: Any, start_step: int, total_steps: int) -> None:
        self.model = trainer.model
        self.t0 = time.perf_counter()
        if 0 in self.at:
            self.read(self.model, 0)

    def on_step(self, step: int, record: dict[str, Any] | None) -> None:
        if record is not None:
            self.train_records[step] = {k: _r(record[k]) for k in ("ce", "reg", "mean_depth", "policy_grad_norm",
                                                                     "network_grad_norm")}
        if step in self.at:
            self.read(self.model, step)


def train_decider(path: str, straight_through: str, *, steps: int, batch_size: int, seed: int, warmup_steps: int,
                  at: list[int], n: int, eval_seed: int, out: str | None = None) -> dict[str, Any]:
    network, task = anira.load(path)
    held = held_out_tokens(network, task, n, eval_seed)
    spec = decider_spec(path, straight_through, steps=steps, batch_size=batch_size, seed=seed,
                        warmup_steps=warmup_steps)
    reader = ReadDepths(task, held, [s for s in at if s <= steps] + [steps])
    with tempfile.TemporaryDirectory() as tmp:
        result = train(spec, out or Path(tmp) / "run", callbacks=[reader])
        trained, _ = anira.load(result.checkpoint)
    # the frozen network is the checkpoint's, bit for bit
    before = {k: v for k, v in network.state_dict().items() if not k.startswith("policy.")}
    after = trained.state_dict()
    unchanged = all(torch.equal(v, after[k]) for k, v in before.items())
    t = spec.train
    for record in reader.records:
        record["train"] = reader.train_records.get(record["step"])
    return {
        "policy": network.policy.name, "straight_through": straight_through, "steps": result.step,
        "batch_size": batch_size, "seed": seed, "lr": t.lr * t.decider_lr_mult, "warmup_steps": warmup_steps,
        "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
        "gamma": network.policy.gamma, "prior_base": network.policy.prior_base,
        "network_unchanged": unchanged, "wall_s": round(result.wall_s, 1),
        "n_per_difficulty": n, "eval_seed": eval_seed,
        "frozen_network": {"exact_match_full_depth": _r(held.solved_full_depth.mean()),
                           "mean_needed": _r(held.needed[held.needed > 0].mean()),
                           "mean_confident": _r(held.confident[held.confident > 0].mean()),
                           "mean_loss_optimal": _r(held.optimal.mean()), "iteration_price": _r(held.price),
                           "undefined": int((held.needed == 0).sum()), "answer_tokens": int(len(held.needed))},
        "reads": reader.records,
    }


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------


def compact_json(value: Any, indent: str = "") -> str:
    """JSON with one line per innermost object or list (small diffs, short files)."""
    leaf = lambda v: not isinstance(v, (dict, list)) or (isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v))
    if isinstance(value, dict) and not all(leaf(v) for v in value.values()):
        inner = indent + " "
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and not leaf(value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + compact_json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def _merge(path: str, section: str, key: str, sub: str | None, value: dict[str, Any], command: str) -> None:
    file = Path(path)
    data = json.loads(file.read_text()) if file.is_file() else {}
    data.setdefault("machine", "2-core CPU shared with other work, torch threads 1")
    node = data.setdefault(section, {}).setdefault(key, {})
    value = {"command": command, **value}
    if sub is None:
        data[section][key] = value
    else:
        node[sub] = value
    file.write_text(compact_json(data) + "\n")


def _print_follow(name: str, r: dict[str, Any]) -> None:
    need = r["needed"]
    print(f"## {name} ({r['policy']}, D {r['D']}): exact match {need['exact_match_full_depth']} at depth D, "
          f"{r['exact_match_policy']} at the policy's depths; {need['answer_tokens']} answer tokens, "
          f"{need['undefined']} wrong at D; n = 1..D: {need['histogram_1_to_D']}; right then wrong: "
          f"{need['right_then_wrong']}; CE by depth {need['mean_ce_by_depth']}, at n {need['mean_ce_at_needed']}")
    for label, rows in (("first answer position / the rest / the last (closing) one / all but the last",
                         r["by_answer_index"]),
                        ("in the decider's own context (only answer positions forced)", r["own_context"])):
        print(f"\nneeded depth: {label}\n")
        print("| tokens | tokens | mean n | mean exit | Spearman | premature | at n | wasted | mean excess |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k in ("pooled", "first", "rest", "last", "not_last", "loss_optimal"):
            if rows.get(k) is not None:
                s = rows[k]
                print(f"| {k} | {s['tokens']} | {s.get('mean_needed')} | {s.get('mean_exit')} | {s.get('spearman')} | "
                      f"{s.get('premature')} | {s.get('at_needed')} | {s.get('wasted')} | {s.get('mean_excess')} |")
    for label, suffix in (("argmax right", ""), ("argmax right, all but the last answer position", "_not_last"),
                          (f"p >= {CONFIDENT}", "_confident"), ("loss-optimal", "_loss_optimal")):
        pooled = r["by_answer_index"]["not_last"] if suffix == "_not_last" else r.get("pooled" + suffix)
        if pooled is None:
            continue
        print(f"\nneeded depth: {label}\n")
        print("| difficulty | tokens | mean n | mean exit | Spearman | premature | at n | wasted | mean excess |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, s in [("pooled", pooled), *r.get("by_difficulty" + suffix, {}).items()]:
            print(f"| {k} | {s['tokens']} | {s.get('mean_needed')} | {s.get('mean_exit')} | {s.get('spearman')} | "
                  f"{s.get('premature')} | {s.get('at_needed')} | {s.get('wasted')} | {s.get('mean_excess')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fo = sub.add_parser("follow", help="the checkpoints' own deciders against n_i")
    fo.add_argument("checkpoints", nargs="+")
    tr = sub.add_parser("train", help="a fresh decider trained on the checkpoint's frozen network")
    tr.add_argument("checkpoint")
    tr.add_argument("--straight-through", choices=("running", "all"), required=True)
    tr.add_argument("--steps", type=int, default=300)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--train-seed", type=int, default=1, help="decider init, exit sampling and training data")
    tr.add_argument("--warmup-steps", type=int, default=0, help="LR warm-up of the decider")
    tr.add_argument("--at", default="0,25,50,100,200,300", help="steps at which to read the decider")
    tr.add_argument("--out", help="keep the run directory here (default: a temporary one)")
    for p in (fo, tr):
        p.add_argument("--n", type=int, default=128, help="held-out instances per in-distribution difficulty")
        p.add_argument("--seed", type=int, default=0, help="seed of the held-out instances (anira eval --seed)")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--json", help="merge the results into this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    command = "python scripts/known_depth_deciders.py " + shlex.join(sys.argv[1:])
    if args.command == "follow":
        for path in args.checkpoints:
            name = Path(path).resolve().name
            result = follow(path, args.n, args.seed)
            _print_follow(name, result)
            if args.json:
                _merge(args.json, "follow", name, None, result, command)
        return
    name = Path(args.checkpoint).resolve().name
    at = [int(s) for s in args.at.split(",") if s.strip()]
    result = train_decider(args.checkpoint, args.straight_through, steps=args.steps, batch_size=args.batch_size,
                           seed=args.train_seed, warmup_steps=args.warmup_steps, at=at, n=args.n,
                           eval_seed=args.seed, out=args.out)
    fn = result["frozen_network"]
    print(f"## {name}, fresh {result['policy']} decider, straight_through={args.straight_through}: "
          f"{result['steps']} steps in {result['wall_s']} s; network unchanged: {result['network_unchanged']}; "
          f"frozen network at depth D: exact match {fn['exact_match_full_depth']}, mean n {fn['mean_needed']}")
    print("| step | exact match | mean exit | Spearman(exit, n) | premature | wasted | mean excess | "
          f"Spearman, p >= {CONFIDENT} | premature | vs loss-optimal: Spearman | premature | mean excess | "
          "train CE | train depth |")
    print("| --- " * 14 + "|")
    for r in result["reads"]:
        t, c, o = r["train"] or {}, r["confident"], r["loss_optimal"]
        print(f"| {r['step']} | {r['exact_match']} | {r['mean_exit']} | {r['spearman']} | {r['premature']} | "
              f"{r['wasted']} | {r['mean_excess']} | {c.get('spearman')} | {c.get('premature')} | "
              f"{o.get('spearman')} | {o.get('premature')} | {o.get('mean_excess')} | "
              f"{t.get('ce')} | {t.get('mean_depth')} |")
    if args.json:
        _merge(args.json, "train", name, args.straight_through, result, command)


if __name__ == "__main__":
    main()
