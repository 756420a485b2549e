"""The per-token table every probe suite reads.

One row per analysed token position of one generated instance, stored
columnar (one numpy array per column, all aligned by row). Rows are ordered
instance by instance, positions ascending. Alignment follows the task
convention: the row of position ``i`` describes the computation at ``i``,
which predicts token ``i + 1`` (so answer rows are where ``answer_mask[i]``).

Columns (``table[name]``), each of length ``n_rows``:

==================  =========  ==================================================
``instance``        int64      instance id (0..n_instances-1): the group for GroupKFold
``position``        int32      position i in the sequence
``difficulty``      int32      the instance's difficulty knob value
``token``           int32      token id at position i
``is_answer``       bool       token i+1 is an answer token
``is_question``     bool       token i belongs to the question
``correct``         bool       the whole instance is solved (task.score, exact match)
``token_correct``   bool       the prediction at i equals token i+1
``exit_depth``      int16      iterations the token ran, 1..D
``expected_depth``  float64    Σ_d d·q(d)
``complexity``      float32    the task's per-token complexity (NaN where undefined)
==================  =========  ==================================================

Matrices: ``table.q`` (n_rows, D) float32 is the policy's exit-depth
distribution q(d), d = 1..D; ``table.running`` (n_rows, D) bool says the token
computed at iteration t (0-based; d = t + 1). ``table.hazard()`` turns q into
the per-iteration halting probability P(exit at d | still running at d).

Task features: ``table.feature(name)`` float64 (NaN where undefined), declared
``static`` or ``execution`` in ``table.specs[name]`` (the task's FeatureSpec).

Hidden states (on request at collection): ``table.hidden(site, t)`` float32
(n_rows, d_model), e.g. ``hidden("prelude.0.hook_resid_post")`` or
``hidden("hook_resid_post", t=3)`` for ``loop.3.hook_resid_post``. Large ones
live in memory-mapped files (see :mod:`anira.probes.collect`).

``meta`` is a JSON-able dict: task, knob, policy, timing, max_iters, seed,
split, n_instances, checkpoint, skipped difficulties, depth override, ...
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from anira.errors import AniraError
from anira.task import FeatureSpec

Where = Literal["answer", "question", "all", "answer|question"]
WHERES: tuple[str, ...] = ("answer", "question", "all", "answer|question")

#: name -> dtype of the per-row base columns
BASE_COLUMNS: dict[str, str] = {
    "instance": "int64",
    "position": "int32",
    "difficulty": "int32",
    "token": "int32",
    "is_answer": "bool",
    "is_question": "bool",
    "correct": "bool",
    "token_correct": "bool",
    "exit_depth": "int16",
    "expected_depth": "float64",
    "complexity": "float32",
}
MANIFEST = "table.json"
NULL_DIR = "null"  # a saved table's null control, itself a saved table
SCHEMA = 1


def null_dir(draw: int) -> str:
    """Where a saved table keeps null draw ``draw``: ``null`` (the first, as always),
    then ``null.1``, ``null.2``, ..."""
    return NULL_DIR if draw == 0 else f"{NULL_DIR}.{draw}"


def hidden_name(site: str, t: int | None = None) -> str:
    """The full hook name of ``site`` (at loop iteration ``t`` when given)."""
    return site if t is None else f"loop.{int(t)}.{site}"


class TokenTable:
    """Columnar per-token table (see the module docstring for the schema)."""

    def __init__(
        self,
        columns: dict[str, np.ndarray],
        q: np.ndarray,
        running: np.ndarray,
        features: dict[str, np.ndarray],
        specs: dict[str, FeatureSpec],
        *,
        hidden: dict[str, np.ndarray] | None = None,
        hidden_index: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        missing = [c for c in BASE_COLUMNS if c not in columns]
        if missing:
            raise AniraError(f"token table lacks column(s) {', '.join(missing)}")
        n = int(np.asarray(columns["instance"]).shape[0])
        self.columns = {name: np.asarray(columns[name]) for name in BASE_COLUMNS}
        for name, col in self.columns.items():
            if col.shape != (n,):
                raise AniraError(f"column {name!r} has shape {col.shape}, expected ({n},)")
        q = np.asarray(q, dtype=np.float32)
        running = np.asarray(running, dtype=bool)
        if q.ndim != 2 or q.shape[0] != n or running.shape != q.shape:
            raise AniraError(f"q and running must both be (n_rows={n}, D); got {q.shape} and {running.shape}")
        self.q = q
        self.running = running
        if set(features) != set(specs):
            raise AniraError("features and their specs name different features")
        self._features = {k: np.asarray(v, dtype=np.float64) for k, v in features.items()}
        for name, values in self._features.items():
            if values.shape != (n,):
                raise AniraError(f"feature {name!r} has shape {values.shape}, expected ({n},)")
        self.specs = dict(specs)
        # hidden arrays may have more rows than the table (a selection shares them):
        # table row r reads hidden row hidden_index[r]
        self._hidden = dict(hidden or {})
        self._hidden_index = hidden_index
        self.meta: dict[str, Any] = dict(meta or {})
        self._tempdir: Any = None  # a TemporaryDirectory the table owns (streamed collection)
        #: the selection null control's draws (same rows; depths permuted within size and
        #: the model re-run with them, so ``correct`` is what those depths give), each an
        #: independent permutation; empty when none was collected. ``null`` is the first.
        self.nulls: list[TokenTable] = []

    @property
    def null(self) -> TokenTable | None:
        """The selection null control's first draw (None when none was collected)."""
        return self.nulls[0] if self.nulls else None

    @null.setter
    def null(self, value: TokenTable | None) -> None:
        self.nulls = [] if value is None else [value]

    # -- shape ------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.columns["instance"].shape[0])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def max_iters(self) -> int:
        return int(self.q.shape[1])

    @property
    def n_instances(self) -> int:
        return int(np.unique(self.columns["instance"]).shape[0])

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.columns:
            return self.columns[name]
        raise AniraError(f"no column {name!r}; columns: {', '.join(self.columns)}")

    def __repr__(self) -> str:
        return (f"TokenTable({self.n_rows} rows, {self.n_instances} instances, D={self.max_iters}, "
                f"features={list(self.specs)}, hidden={self.hidden_sites})")

    # -- features ---------------------------------------------------------------------
    def feature_names(self, kind: str | None = None, where: str | None = None) -> list[str]:
        """Feature names (declaration order), optionally of one ``kind`` and
        declared at ``where`` ("answer" / "question": features declared there or at "all")."""
        if kind not in (None, "static", "execution"):
            raise AniraError(f"feature kind must be 'static' or 'execution', got {kind!r}")
        out = []
        for name, spec in self.specs.items():
            if kind is not None and spec.kind != kind:
                continue
            if where in ("answer", "question") and spec.where not in (where, "all"):
                continue
            out.append(name)
        return out

    def feature(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        if name not in self._features:
            raise AniraError(f"no feature {name!r}; features: {', '.join(self._features) or 'none'}")
        values = self._features[name]
        return values if rows is None else values[rows]

    def features(self, kind: str | None = None, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{name: values}`` of every feature (of ``kind``), restricted to ``rows``."""
        return {name: self.feature(name, rows) for name in self.feature_names(kind)}

    def matrix(self, names: Sequence[str], rows: np.ndarray | None = None) -> np.ndarray:
        """Features ``names`` as columns of a float64 matrix (n, len(names))."""
        n = self.n_rows if rows is None else len(np.arange(self.n_rows)[rows])
        if not names:
            return np.zeros((n, 0))
        return np.column_stack([self.feature(name, rows) for name in names])

    # -- row selection ------------------------------------------------------------------
    def rows(self, where: str = "all", *, correct_only: bool = False, defined: Iterable[str] = ()) -> np.ndarray:
        """Row indices (int64, ascending) of ``where`` tokens ("answer", "question",
        "answer|question", "all"), of solved instances only if ``correct_only``, where
        every feature in ``defined`` is not NaN."""
        if where not in WHERES:
            raise AniraError(f"token set must be one of {', '.join(WHERES)}; got {where!r}")
        mask = np.ones(self.n_rows, dtype=bool)
        if where == "answer":
            mask &= self.columns["is_answer"]
        elif where == "question":
            mask &= self.columns["is_question"]
        elif where == "answer|question":
            mask &= self.columns["is_answer"] | self.columns["is_question"]
        if correct_only:
            mask &= self.columns["correct"]
        for name in defined:
            mask &= ~np.isnan(self.feature(name))
        return np.flatnonzero(mask)

    def groups(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Instance ids: the ``groups`` argument of GroupKFold (split by instance)."""
        ids = self.columns["instance"]
        return ids if rows is None else ids[rows]

    def hazard(self, rows: np.ndarray | None = None) -> np.ndarray:
        """P(exit at depth d | running at d) = q(d) / Σ_{d' ≥ d} q(d'), shape (n, D);
        NaN where no mass is left (the token surely exited before d)."""
        q = (self.q if rows is None else self.q[rows]).astype(np.float64)
        tail = np.cumsum(q[:, ::-1], axis=1)[:, ::-1]  # Σ_{d' >= d} q(d')
        with np.errstate(invalid="ignore", divide="ignore"):
            h = q / tail
        h[tail <= 1e-12] = np.nan
        return h

    def select(self, rows: np.ndarray) -> TokenTable:
        """A new table of ``rows`` (hidden states are shared, not copied)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        index = rows if self._hidden_index is None else self._hidden_index[rows]
        out = TokenTable(
            {k: v[rows] for k, v in self.columns.items()},
            self.q[rows],
            self.running[rows],
            {k: v[rows] for k, v in self._features.items()},
            self.specs,
            hidden=self._hidden,
            hidden_index=index if self._hidden else None,
            meta=self.meta,
        )
        out._tempdir = self._tempdir  # keep the backing files alive while the selection lives
        out.nulls = [null.select(rows) for null in self.nulls]
        return out

    # -- hidden states --------------------------------------------------------------------
    @property
    def hidden_sites(self) -> list[str]:
        return list(self._hidden)

    def hidden(self, site: str, t: int | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Hidden states at hook ``site`` (at loop iteration ``t``) for ``rows``:
        float32 (n, d_model), aligned with the table's rows."""
        name = hidden_name(site, t)
        if name not in self._hidden:
            have = ", ".join(self._hidden) or "none"
            raise AniraError(f"no hidden states stored for {name!r}; stored: {have}")
        index = self._hidden_index
        if rows is not None:
            index = np.arange(self.n_rows)[rows] if index is None else index[rows]
        data = self._hidden[name]
        return np.asarray(data if index is None else data[index], dtype=np.float32)

    # -- storage ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the table (manifest ``table.json`` + one raw ``.bin`` per array) to
        ``directory``; :meth:`load` memory-maps it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {f"col.{k}": v for k, v in self.columns.items()}
        arrays["q"] = self.q
        arrays["running"] = self.running
        arrays.update({f"feat.{k}": v for k, v in self._features.items()})
        arrays.update({f"hidden.{k}": self.hidden(k) for k in self._hidden})
        entries = {}
        for key, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            arr.tofile(directory / f"{key}.bin")
            entries[key] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
        write_manifest(directory, entries, self.specs, self.meta)
        for draw, null in enumerate(self.nulls):
            null.save(directory / null_dir(draw))
        stale = len(self.nulls)  # draws of a table saved here before must not load with this one
        while (directory / null_dir(stale) / MANIFEST).is_file():
            shutil.rmtree(directory / null_dir(stale))
            stale += 1
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TokenTable:
        """Open a saved or streamed table; hidden states stay memory-mapped."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise AniraError(f"{directory}: not a token table ({MANIFEST} is missing)")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AniraError(f"{path}: not valid JSON ({exc.msg})") from None
        if manifest.get("schema") != SCHEMA:
            raise AniraError(f"{path}: schema {manifest.get('schema')!r}, this anira reads {SCHEMA}")
        arrays = {key: open_array(directory / f"{key}.bin", e["dtype"], e["shape"])
                  for key, e in manifest["arrays"].items()}
        specs = {name: FeatureSpec(name=name, **s) for name, s in manifest["features"].items()}
        table = cls(
            {k[4:]: np.array(v) for k, v in arrays.items() if k.startswith("col.")},
            np.array(arrays["q"]),
            np.array(arrays["running"]),
            {k[5:]: np.array(v) for k, v in arrays.items() if k.startswith("feat.")},
            specs,
            hidden={k[7:]: v for k, v in arrays.items() if k.startswith("hidden.")},
            meta=manifest.get("meta", {}),
        )
        while (directory / null_dir(len(table.nulls)) / MANIFEST).is_file():
            table.nulls.append(cls.load(directory / null_dir(len(table.nulls))))
        return table

    # -- synthetic tables (tests, planted answers) -----------------------------------------
    @classmethod
    def from_arrays(
        cls,
        *,
        instance: np.ndarray,
        exit_depth: np.ndarray,
        max_iters: int,
        features: dict[str, np.ndarray],
        kinds: dict[str, str],
        q: np.ndarray | None = None,
        difficulty: np.ndarray | None = None,
        where: str = "answer",
        correct: np.ndarray | None = None,
        token: np.ndarray | None = None,
        position: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
    ) -> TokenTable:
        """A table from the few arrays a planted-answer test controls; the rest is
        filled consistently: q is one-hot at the exit depth unless given, every row
        is a ``where`` token ("answer" or "question") of a solved instance, token
        ids are 0 and positions count the rows of each instance, unless given."""
        instance = np.asarray(instance, dtype=np.int64)
        n = instance.shape[0]
        depth = np.asarray(exit_depth, dtype=np.int64)
        if depth.shape != (n,) or depth.min(initial=1) < 1 or depth.max(initial=1) > max_iters:
            raise AniraError(f"exit_depth must be ({n},) with values in 1..{max_iters}")
        if q is None:
            q = np.eye(max_iters, dtype=np.float32)[depth - 1]
        q = np.asarray(q, dtype=np.float32)
        d = np.arange(1, max_iters + 1)
        if position is not None:
            position = np.asarray(position, dtype=np.int32)
        elif n:
            starts = np.r_[True, instance[1:] != instance[:-1]]
            run_id = np.cumsum(starts) - 1
            first = np.flatnonzero(starts)
            position = (np.arange(n) - first[run_id]).astype(np.int32)
        else:
            position = np.zeros(0, dtype=np.int32)
        columns = {
            "instance": instance,
            "position": position,
            "difficulty": np.zeros(n, np.int32) if difficulty is None else np.asarray(difficulty, np.int32),
            "token": np.zeros(n, np.int32) if token is None else np.asarray(token, np.int32),
            "is_answer": np.full(n, where == "answer"),
            "is_question": np.full(n, where == "question"),
            "correct": np.ones(n, bool) if correct is None else np.asarray(correct, bool),
            "token_correct": np.ones(n, bool),
            "exit_depth": depth.astype(np.int16),
            "expected_depth": (q.astype(np.float64) * d).sum(1),
            "complexity": np.full(n, np.nan, np.float32),
        }
        specs = {name: FeatureSpec(name, kinds[name], "planted", True, where) for name in features}
        running = d[None, :] <= depth[:, None]
        return cls(columns, q, running, features, specs,
                   meta={"task": "planted", "max_iters": max_iters, **(meta or {})})


def open_array(path: Path, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """A read-only memory map of a raw array file (empty arrays need no file)."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=np.dtype(dtype))
    if not path.is_file():
        raise AniraError(f"{path}: missing array file of the token table")
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=shape)


def write_manifest(directory: Path, arrays: dict[str, Any], specs: dict[str, FeatureSpec], meta: dict[str, Any]) -> None:
    from anira.plots import atomic_write_bytes
    from anira.probes.suites import json_safe

    manifest = {
        "schema": SCHEMA,
        "arrays": arrays,
        "features": {n: {"kind": s.kind, "description": s.description, "discrete": s.discrete, "where": s.where}
                     for n, s in specs.items()},
        "meta": json_safe(meta),
    }
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def own_tempdir(table: TokenTable, tempdir: Any) -> None:
    """Make ``table`` own ``tempdir`` (a TemporaryDirectory): removed once the table
    and every selection of it are garbage-collected."""
    table._tempdir = tempdir  # TemporaryDirectory removes itself when collected
