"""BREVO: recursive dependencies in a DAG, answered in DFS post-order (the paper's §3).

An edge ``u v`` in the input means "v depends on u" (u is a predecessor of v).
The answer lists every node the query depends on, directly or transitively,
in the post-order of a depth-first search from the query that visits
predecessors in lexicographic order of their names; the query is excluded.
So every node appears after all of its own dependencies.

Difficulty knob: N, the number of nodes. Generation: draw N distinct names
from a pool of 100 and place them in a random topological order; node j ≥ 1
takes k ~ U{1..min(4, #eligible)} distinct predecessors among the earlier
nodes whose out-degree is still below 4 (so in- and out-degree are ≤ 4 and
every node appears in an edge); the last node in the order is the query. The
edges are shuffled.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

import numpy as np

from anira.errors import AniraError
from anira.hookspecs import hookimpl
from anira.task import DifficultyRanges, Example, FeatureSpec, Task, Tokenizer
from anira.plugins.tasks._common import BOS, EOS, assemble, name_pool, nan_array

MAX_DEGREE = 4
NAMES = name_pool(100)
QUERY, SEP = "?", "="


def dfs_trace(preds: dict[str, list[str]], query: str) -> tuple[list[dict], int]:
    """Run the reference DFS and record the solver state at every emission.

    Returns one record per emitted node (in output order) with the DFS depth,
    frontier, entered set size and the work done since the previous emission,
    plus the work done after the last emission (until the search ends).
    Work counts node entries, predecessor-edge inspections and node finishes.
    """
    entered = {query}
    stack: list[list] = [[query, 0]]
    work = 1  # entering the query
    records: list[dict] = []
    while stack:
        frame = stack[-1]
        node, idx = frame
        ps = preds.get(node, [])
        if idx < len(ps):
            frame[1] = idx + 1
            p = ps[idx]
            work += 1  # inspect the edge p -> node
            if p not in entered:
                entered.add(p)
                stack.append([p, 0])
                work += 1  # enter p
            continue
        stack.pop()
        work += 1  # finish node
        if node == query:
            break
        waiting = set()
        for f, _ in stack:
            waiting.update(p for p in preds.get(f, []) if p not in entered)
        records.append({"node": node, "depth": len(stack), "frontier": len(waiting), "work": work})
        work = 0
    return records, work


class Brevo(Task):
    """A DAG and a query → the query's dependencies in DFS post-order.

    Sequence: ``<bos> u1 v1 u2 v2 ... ? QUERY = A1 ... Am <eos>``, one edge
    ``u v`` (v depends on u) per token pair, edges shuffled.

    Worked instance (N = 4): edges ``ce→ab, ab→dh, ce→dh, bj→dh``, query ``dh``::

        <bos> ce ab ab dh ce dh bj dh ? dh = ce ab bj <eos>
        pos   0   1 .. 8 (edges)           9 10 11 12 13 14 15

    DFS from dh visits its predecessors in name order ab, bj, ce: enter ab →
    enter ce (no predecessors) → emit ce; ab is done → emit ab; enter bj →
    emit bj; ce already visited; dh is done. Answer ``ce ab bj``.

    ==========  ===========  ==========  ==========
    feature     pos 11 (ce)  pos 12 (ab)  pos 13 (bj)
    ==========  ===========  ==========  ==========
    N           4            4           4
    hub         2            1           1
    in_degree   0            1           0
    remaining   3            2           1
    deps        0            1           0
    dfs_depth   2            1           1
    frontier    1            1           0
    enabled     1            0           1
    distance    1            1           1
    complexity  6            1           3
    ==========  ===========  ==========  ==========

    Emitting ce leaves dh and ab on the DFS path (depth 2), bj still waiting
    below dh (frontier 1), and makes ab enabled (its only dependency is done).
    Emitting bj completes every dependency of the query (enabled 1). The
    ``<eos>`` step (pos 14) has complexity 2 (inspect ce again, finish dh) and
    only N defined.
    """

    name = "brevo"
    description = "DAG dependencies of a query node in DFS post-order"
    knob = "N = number of nodes"
    complexity_description = (
        "answer positions: operations of the reference DFS (node entries, edge inspections, "
        "node finishes) since the previous output; the <eos> step gets the work left; NaN elsewhere"
    )
    default_ranges = DifficultyRanges(train=(3, 30), test_id=(3, 30), test_ood=(31, 40))
    min_difficulty = 3
    max_difficulty = len(NAMES) // 2
    default_max_iters = 6
    tokenizer = Tokenizer([BOS, EOS, QUERY, SEP, *NAMES])

    features: ClassVar[tuple[FeatureSpec, ...]] = (
        FeatureSpec("N", "static", "number of nodes in the graph", True, "answer"),
        FeatureSpec("hub", "static", "out-degree of the output node (nodes that depend on it directly)"),
        FeatureSpec("in_degree", "static", "in-degree of the output node (its direct dependencies)"),
        FeatureSpec(
            "remaining", "static",
            "remaining subtree size: answer nodes not yet output, counting the current one",
        ),
        FeatureSpec("deps", "static", "transitive dependencies of the output node"),
        FeatureSpec(
            "dfs_depth", "execution", "depth of the output node in the DFS tree (query at depth 0)"
        ),
        FeatureSpec(
            "frontier", "execution",
            "active frontier: distinct unvisited predecessors of the nodes left on the DFS path",
        ),
        FeatureSpec(
            "enabled", "execution",
            "newly enabled nodes: nodes needed by the query (or the query) all of whose "
            "dependencies are output once this node is",
        ),
        FeatureSpec("distance", "execution", "shortest path length from the output node to the query"),
    )

    def max_len(self, difficulty: int) -> int:
        self.check_difficulty(difficulty)
        max_edges = sum(min(MAX_DEGREE, j) for j in range(1, difficulty))
        return 1 + 2 * max_edges + 3 + (difficulty - 1) + 1

    def _draft(self, difficulty: int, rng: np.random.Generator):
        edges, query = self._draw_graph(difficulty, rng)
        words = [BOS, *(name for edge in edges for name in edge), QUERY, query, SEP]
        return np.asarray(self.tokenizer.encode(words), dtype=np.int64), lambda: self.build(edges, query)

    def _draw_graph(self, difficulty: int, rng: np.random.Generator) -> tuple[list[tuple[str, str]], str]:
        n = difficulty
        names = [NAMES[i] for i in rng.choice(len(NAMES), size=n, replace=False).tolist()]
        out_deg = [0] * n
        edges: list[tuple[str, str]] = []
        for j in range(1, n):
            eligible = [u for u in range(j) if out_deg[u] < MAX_DEGREE]
            k = int(rng.integers(1, min(MAX_DEGREE, len(eligible)) + 1))
            # k distinct eligible predecessors: the k smallest of random keys
            keys = rng.random(len(eligible))
            for idx in np.argpartition(keys, k - 1)[:k].tolist():
                u = eligible[idx]
                out_deg[u] += 1
                edges.append((names[u], names[j]))
        order = rng.permutation(len(edges)).tolist()
        return [edges[i] for i in order], names[-1]

    def build(self, edges: list[tuple[str, str]], query: str) -> Example:
        """The example for edges ``(u, v)`` (v depends on u), in input order, and a query."""
        preds: dict[str, list[str]] = {}
        succs: dict[str, list[str]] = {}
        nodes = {query}
        if len({tuple(e) for e in edges}) != len(edges):
            raise AniraError("brevo: duplicate edges")
        for u, v in edges:
            if u == v:
                raise AniraError(f"brevo: self-loop on {u!r}")
            preds.setdefault(v, []).append(u)
            succs.setdefault(u, []).append(v)
            nodes.update((u, v))
        if not nodes <= set(NAMES):
            raise AniraError(f"brevo: {sorted(nodes - set(NAMES), key=str)[0]!r} is not a node name")
        for v in preds:
            preds[v].sort()
        n_nodes = len(nodes)
        records, tail_work = dfs_trace(preds, query)
        answer = [rec["node"] for rec in records]
        needed = set(answer) | {query}
        # distance to the query: BFS backwards along predecessor edges
        dist = {query: 0}
        queue = deque([query])
        while queue:
            v = queue.popleft()
            for u in preds.get(v, []):
                if u not in dist:
                    dist[u] = dist[v] + 1
                    queue.append(u)
        # transitive dependencies of each answer node; post-order puts dependencies first
        ancestors: dict[str, set[str]] = {}
        for v in answer:
            acc: set[str] = set()
            for u in preds.get(v, []):
                if u not in ancestors:  # a dependency not output before v: a back edge
                    raise AniraError(f"brevo: the graph has a cycle through {u!r}")
                acc.add(u)
                acc |= ancestors[u]
            ancestors[v] = acc

        tokens = [BOS]
        for u, v in edges:
            tokens += [u, v]
        tokens += [QUERY, query, SEP, *answer, EOS]
        n = len(tokens)
        first = n - len(answer) - 2  # position of "=", predicting the first answer node
        feats = {spec.name: nan_array(n) for spec in self.features}
        complexity = nan_array(n)
        done: set[str] = set()
        m = len(answer)
        for k, rec in enumerate(records):
            x, i = rec["node"], first + k
            done.add(x)
            feats["N"][i] = n_nodes
            feats["hub"][i] = len(succs.get(x, []))
            feats["in_degree"][i] = len(preds.get(x, []))
            feats["remaining"][i] = m - k
            feats["deps"][i] = len(ancestors[x])
            feats["dfs_depth"][i] = rec["depth"]
            feats["frontier"][i] = rec["frontier"]
            feats["enabled"][i] = sum(
                1 for y in succs.get(x, []) if y in needed and y not in done
                and all(p in done for p in preds[y])
            )
            feats["distance"][i] = dist[x]
            complexity[i] = rec["work"]
        feats["N"][n - 2] = n_nodes
        complexity[n - 2] = tail_work
        instance = {
            "N": n_nodes,
            "nodes": sorted(nodes),
            "edges": [f"{u}->{v}" for u, v in edges],
            "query": query,
        }
        return assemble(
            self.tokenizer, tokens, first + 1, complexity=complexity, features=feats,
            instance=instance, difficulty=n_nodes, answer=answer,
        )


@hookimpl
def register_tasks(register):
    register(Brevo)
