"""Checkpoints: safetensors + JSON, written atomically, loaded without unpickling.

A checkpoint is a directory::

    model.safetensors        the model's state_dict (weights and persistent buffers)
    config.json              model, policy, task and training config, package
                             version, git commit, format version, step, file digests
    metrics.jsonl            the run's metrics up to this step
    train_state.safetensors  (optional, for --resume) optimizer state, step, RNG states

A training run directory holds ``run.json`` (the run's spec), a live
``metrics.jsonl``, ``checkpoints/step-XXXXXXXX/`` and ``latest`` (the name of
the newest complete checkpoint). Each checkpoint is written into a temporary
directory and renamed into place, and ``latest`` is replaced atomically after
it, so a crash mid-save never leaves a half-written checkpoint as the latest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from anira.config import ModelConfig
from anira.errors import AniraError
from anira.fileio import atomic_write_bytes

FORMAT = "anira-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "train_state.safetensors"
RUN_FILE = "run.json"
LATEST_FILE = "latest"
CHECKPOINTS_DIR = "checkpoints"


# ---------------------------------------------------------------------------------------
# small file helpers
# ---------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so readers see either the old or the new content, never a mix."""
    atomic_write_bytes(path, text.encode("utf-8"))
    _fsync_dir(path.parent)


def file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree anira runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise AniraError(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AniraError(f"{path}: not valid JSON (truncated or corrupt): {exc}") from None
    if not isinstance(data, dict):
        raise AniraError(f"{path}: expected a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type, where: Path) -> Any:
    if name not in data:
        raise AniraError(f"{where}: missing field {name!r}")
    if not isinstance(data[name], kind):
        raise AniraError(f"{where}: field {name!r} must be a {kind.__name__}, got {type(data[name]).__name__}")
    return data[name]


def _load_tensors(path: Path, expected: dict[str, Any] | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (never pickle), checking it against its recorded digest."""
    if not path.is_file():
        raise AniraError(f"{path}: file is missing")
    if expected is not None:
        actual = file_digest(path)
        if actual["bytes"] != expected.get("bytes"):
            raise AniraError(
                f"{path}: {actual['bytes']} bytes but config.json field files.{path.name}.bytes says "
                f"{expected.get('bytes')} (truncated or replaced)"
            )
        if actual["sha256"] != expected.get("sha256"):
            raise AniraError(f"{path}: content does not match config.json field files.{path.name}.sha256 (corrupt or replaced)")
    try:
        tensors = load_file(str(path), device="cpu")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AniraError(f"{path}: not a readable safetensors file (truncated or corrupt): {exc}") from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------
# model state
# ---------------------------------------------------------------------------------------


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Copy tensors into ``model``, naming any missing, unexpected or misshaped tensor."""
    from anira.layers import merge_legacy_projections

    tensors = merge_legacy_projections(tensors)  # checkpoints written before the fused layout
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise AniraError(f"{path}: tensor {missing[0]!r} is missing ({len(missing)} missing); config.json does not match the weights")
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise AniraError(f"{path}: unexpected tensor {extra[0]!r}; config.json does not match the weights")
    for name, value in own.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise AniraError(
                f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)} but config.json field "
                f"'model' implies {tuple(value.shape)}"
            )
    model.load_state_dict(tensors, strict=True)


def load_network(model: torch.nn.Module, path: str | Path, *, task: str) -> Path:
    """Copy every tensor of the checkpoint at ``path`` but its policy's into ``model``,
    whose own policy keeps its parameters: a new decider on a trained network
    (``train.init_network_from``). The checkpoint must be of ``task`` and hold each of
    the model's network tensors at the model's shape; its policy may differ (a fixed-depth
    checkpoint has none). Returns the checkpoint directory read."""
    from anira.layers import merge_legacy_projections

    ck = resolve(path)
    config = read_config(ck)
    if config["task"]["name"] != task:
        raise AniraError(f"{ck}: a {config['task']['name']!r} checkpoint cannot initialise a {task!r} run's network")
    tensors, _ = _load_tensors(ck / MODEL_FILE, (config.get("files") or {}).get(MODEL_FILE))
    tensors = merge_legacy_projections(tensors)
    policy = {f"policy.{name}" for name in model.policy.state_dict()}
    own = {name: value for name, value in model.state_dict().items() if name not in policy}
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise AniraError(f"{ck}: tensor {missing[0]!r} is missing ({len(missing)} missing); not the run's network")
    for name, value in own.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise AniraError(f"{ck}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the run's model "
                             f"{tuple(value.shape)}; not the run's network")
    model.load_state_dict({name: tensors[name] for name in own}, strict=False)
    return ck


# ---------------------------------------------------------------------------------------
# optimizer + RNG state, flattened to tensors (no pickle)
# ---------------------------------------------------------------------------------------


def train_state_tensors(optimizer: torch.optim.Optimizer, step: int, extra_meta: dict[str, Any] | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.state.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
    tensors["step"] = torch.tensor(step, dtype=torch.int64)
    tensors["rng.torch_cpu"] = torch.get_rng_state().clone()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "step": str(step),
            "param_groups": json.dumps(groups)}
    for k, v in (extra_meta or {}).items():
        meta[k] = json.dumps(v)
    return tensors, meta


def restore_train_state(optimizer: torch.optim.Optimizer, path: Path, expected: dict[str, Any] | None
                        ) -> tuple[int, dict[str, str]]:
    """Load optimizer and RNG states saved by :func:`train_state_tensors`; returns the step."""
    tensors, meta = _load_tensors(path, expected)
    if "param_groups" not in meta or "step" not in meta:
        raise AniraError(f"{path}: missing metadata field 'param_groups' or 'step'")
    try:
        groups = json.loads(meta["param_groups"])
        step = int(meta["step"])
    except (json.JSONDecodeError, ValueError) as exc:
        raise AniraError(f"{path}: unreadable metadata: {exc}") from None
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    own = optimizer.state_dict()
    if len(groups) != len(own["param_groups"]) or any(
        len(a["params"]) != len(b["params"]) for a, b in zip(groups, own["param_groups"])
    ):
        raise AniraError(f"{path}: optimizer parameter groups do not match the model")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim.state."):
            continue
        idx, key = name[len("optim.state."):].split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if "rng.torch_cpu" not in tensors:
        raise AniraError(f"{path}: missing tensor 'rng.torch_cpu'")
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return step, meta


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------


def checkpoint_config(*, step: int, model_config: ModelConfig, policy: str, policy_options: dict[str, Any],
                      task: str, task_options: dict[str, Any], train: dict[str, Any],
                      run: dict[str, Any] | None = None) -> dict[str, Any]:
    import anira

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anira_version": anira.__version__,
        "git_commit": git_commit(),
        "step": step,
        "model": model_config.to_dict(),
        "policy": {"name": policy, "options": policy_options},
        "task": {"name": task, "options": task_options},
        "train": train,
        "run": run,
    }


def write_checkpoint(dest: Path, config: dict[str, Any], model: torch.nn.Module,
                     metrics_source: Path | None = None,
                     train_state: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None) -> Path:
    """Write a complete checkpoint at ``dest`` (which must not exist), atomically."""
    dest = Path(dest)
    if dest.exists():
        raise AniraError(f"{dest}: already exists; checkpoints are never overwritten")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files: dict[str, Any] = {}
        save_file(model_tensors(model), str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        files[MODEL_FILE] = file_digest(tmp / MODEL_FILE)
        if train_state is not None:
            tensors, meta = train_state
            save_file(tensors, str(tmp / STATE_FILE), metadata=meta)
            files[STATE_FILE] = file_digest(tmp / STATE_FILE)
        if metrics_source is not None and Path(metrics_source).is_file():
            shutil.copyfile(metrics_source, tmp / METRICS_FILE)
        else:
            (tmp / METRICS_FILE).write_text("", encoding="utf-8")
        config = dict(config, files=files)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in os.listdir(tmp):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, dest)  # dest does not exist: an atomic rename of the whole directory
        _fsync_dir(dest.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def export(src: str | Path, dest: str | Path) -> Path:
    """Copy a checkpoint without its training state (for sharing or bundling)."""
    ck = resolve(src)
    config = _read_json(ck / CONFIG_FILE)
    dest = Path(dest)
    if dest.exists():
        raise AniraError(f"{dest}: already exists; checkpoints are never overwritten")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}")
    tmp.mkdir()
    try:
        shutil.copyfile(ck / MODEL_FILE, tmp / MODEL_FILE)
        metrics = ck / METRICS_FILE
        if metrics.is_file():
            shutil.copyfile(metrics, tmp / METRICS_FILE)
        files = {MODEL_FILE: (config.get("files") or {}).get(MODEL_FILE) or file_digest(tmp / MODEL_FILE)}
        out = dict(config, files=files)
        (tmp / CONFIG_FILE).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------
# run directories
# ---------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    pointer = Path(run_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    rel = pointer.read_text(encoding="utf-8").strip()
    if not rel or ".." in Path(rel).parts or Path(rel).is_absolute():
        raise AniraError(f"{pointer}: does not name a checkpoint (got {rel!r})")
    path = Path(run_dir) / rel
    if not (path / CONFIG_FILE).is_file():
        raise AniraError(f"{pointer}: names {rel!r}, which has no {CONFIG_FILE}")
    return path


def commit_checkpoint(run_dir: Path, dest: Path, keep: int) -> None:
    """Point ``latest`` at ``dest`` (atomically), then prune older checkpoints beyond ``keep``."""
    run_dir = Path(run_dir)
    write_text_atomic(run_dir / LATEST_FILE, str(dest.relative_to(run_dir)) + "\n")
    if keep <= 0:
        return
    root = run_dir / CHECKPOINTS_DIR
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in done[:-keep]:
        if old != dest:
            shutil.rmtree(old, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (resolved to its latest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise AniraError(f"{path}: no such checkpoint or run directory")
    if (path / CONFIG_FILE).is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise AniraError(f"{path}: not a checkpoint ({CONFIG_FILE} is missing) and not a run directory with a checkpoint")
    return latest


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its task and its recorded config."""

    path: Path
    model: Any  # RecurrentTransformer
    task: Any  # Task
    config: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate ``config.json`` of a checkpoint (or a run's latest checkpoint)."""
    ck = resolve(path)
    where = ck / CONFIG_FILE
    config = _read_json(where)
    if config.get("format") != FORMAT:
        raise AniraError(f"{where}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise AniraError(
            f"{where}: field 'format_version' is {version!r}; this anira reads version {FORMAT_VERSION} "
            "(written by an incompatible anira version)"
        )
    _field(config, "model", dict, where)
    policy = _field(config, "policy", dict, where)
    task = _field(config, "task", dict, where)
    for part, label in ((policy, "policy"), (task, "task")):
        if not isinstance(part.get("name"), str):
            raise AniraError(f"{where}: missing field '{label}.name'")
        if not isinstance(part.get("options", {}), dict):
            raise AniraError(f"{where}: field '{label}.options' must be an object")
    return config


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", registry: Any = None) -> Checkpoint:
    """Load a checkpoint (never unpickles): rebuild task and model from config.json,
    then copy the weights from model.safetensors."""
    from anira.model import build_model
    from anira.registry import default_registry
    from anira.training.config import build_task

    ck = resolve(path)
    config = read_config(ck)
    where = ck / CONFIG_FILE
    registry = registry or default_registry()
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (AniraError, TypeError) as exc:
        raise AniraError(f"{where}: field 'model': {exc}") from None
    try:
        task = build_task(registry.task(config["task"]["name"]), config["task"].get("options", {}))
    except AniraError as exc:
        raise AniraError(f"{where}: field 'task': {exc}") from None
    if task.vocab_size != model_config.vocab_size:
        raise AniraError(
            f"{where}: field 'model.vocab_size' is {model_config.vocab_size} but task "
            f"{task.name!r} has {task.vocab_size} tokens"
        )
    try:
        model = build_model(model_config, config["policy"]["name"], registry=registry,
                            **config["policy"].get("options", {}))
    except (AniraError, TypeError) as exc:
        raise AniraError(f"{where}: field 'policy': {exc}") from None
    files = config.get("files") or {}
    tensors, _ = _load_tensors(ck / MODEL_FILE, files.get(MODEL_FILE))
    load_model_tensors(model, tensors, ck / MODEL_FILE)
    model.set_tokenizer(task)  # model.to_tokens / to_string read the task's vocabulary
    model.to(device)
    model.eval()
    return Checkpoint(path=ck, model=model, task=task, config=config)


def load(path: str | Path, *, device: str | torch.device = "cpu", registry: Any = None) -> tuple[Any, Any]:
    """``(model, task)`` from a checkpoint or run directory; the model is in eval mode,
    a TransformerLens HookedRootModule ready for ``run_with_cache``."""
    ck = load_checkpoint(path, device=device, registry=registry)
    return ck.model, ck.task


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn final line (crash mid-append) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise AniraError(f"{path}: line {i + 1} is not valid JSON") from None
    return out
