"""Whole-state checkpoints with torch.distributed.checkpoint (DCP), written atomically.

A checkpoint is the folder `checkpoints/step_XXXXXXXX/` holding
- the DCP files of the model and optimizer state (each process writes its own shards; DCP can reload them
  under another FSDP/TP layout),
- `rank_NNNNN.pt`: that process's RNG states and data-loader position (the loaders keep a global position, so a
  checkpoint resumes on another number of processes too; only then are the RNG states not restored),
- `train_state.json`: step, scheduler, spike-guard window, layout and the config, written last by rank 0.

Atomicity: everything is written into `step_XXXXXXXX.tmp/` and renamed to `step_XXXXXXXX/` only when complete,
so a kill during a save leaves the previous checkpoints untouched and `latest()` never returns a partial one.
`get_state_dict`/`set_state_dict` translate between FSDP2/TP (DTensor) parameters and DCP's flat names.
Frozen parameters (the base of a LoRA run) are left out: they never change, and the run reloads them from its base
model, so a LoRA checkpoint holds only the adapters and their optimizer state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from llamaforge.errors import UserError
from llamaforge.io import read_json

OPTIONS = StateDictOptions(ignore_frozen_params=True)
# strict=False only lets the frozen parameters be absent: dcp.load above has already refused a checkpoint that
# lacks any of the trainable ones.
LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)
STEP_DIR = re.compile(r"^step_(\d+)$")
TRAIN_STATE = "train_state.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def step_dir(root: Path, step: int) -> Path:
    """The folder of the checkpoint at optimizer step `step`: ROOT/step_00000042 (zero-padded, so names sort by step).
    """
    return Path(root) / f"step_{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every finished checkpoint under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / TRAIN_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint folder under `root` (one whose train state was published), or None."""
    ckpts = complete_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def rng_state() -> dict:
    """This process's random state (CPU, and CUDA when present), saved with a checkpoint so a resumed run draws the same
    numbers.
    """
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore a state from `rng_state` (the CUDA part only where a GPU is present)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def publish(tmp: Path, final: Path) -> None:
    """The commit point of a save: one rename. Before it the checkpoint does not exist; after it, it is complete."""
    os.replace(tmp, final)


def save(root: Path, step: int, model, optimizer, train_state: dict, rank_state: dict, keep_last_k: int) -> Path:
    """Collective: every process calls it. Returns the published folder."""
    root, rank = Path(root), _rank()
    final, tmp = step_dir(root, step), step_dir(root, step).with_name(step_dir(root, step).name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
        tmp.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)
    with warnings.catch_warnings():  # one process without a process group is a supported DCP use: don't warn
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save({"rng": rng_state(), **rank_state}, tmp / f"rank_{rank:05d}.pt")
    _barrier()  # every process's files are on disk before rank 0 commits
    if rank == 0:
        state = {**train_state, "step": step, "world_size": _world()}
        with open(tmp / TRAIN_STATE, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. a resumed run): replace it
            shutil.rmtree(final)
        publish(tmp, final)
        for _, old in complete_checkpoints(root)[:-keep_last_k] if keep_last_k > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def check_written_here(path: Path, root: Path) -> None:
    """Refuse a checkpoint folder outside `root` (this run's checkpoints folder): resuming unpickles DCP's
    `.metadata` (torch.distributed.checkpoint, as torchtitan does), so a crafted folder could run code."""
    if not Path(path).is_dir():  # say what is wrong first: a typo is not a trust question
        raise UserError(f"{path}: --resume: no such checkpoint folder; expected OUT/checkpoints/step_N or 'auto'")
    path, root = Path(path).resolve(), Path(root).resolve()
    if root not in path.parents:
        raise UserError(f"{path}: --resume: this checkpoint was not written by this run (not under {root}); "
                        "resuming unpickles its .metadata, which can run code. Pass --trust-checkpoint if you "
                        "trust where it came from")


def _short(e: BaseException) -> str:
    """The exception's message on one line, at most ~300 characters (DCP's carries every rank's traceback)."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))
        e = getattr(e, "exc", e)
        if isinstance(e, tuple):  # torch's failure entries are (exception, traceback frames)
            e = e[0]
    text = " ".join(str(e).split())
    return (text[:300] + " ...") if len(text) > 300 else text or type(e).__name__


def shape_differences(saved: dict, given: dict) -> str:
    """What makes a checkpoint's trainable state another shape than the configured one, from the two run configs
    (`TrainConfig.to_dict()`: the saved one in train_state["config"], the given one): "lora.rank: saved 8, given 4;
    ...". A finetuning run (finetune.base set) is compared on its base, method and [lora] (its [model] section is
    unused: the model comes from the base); a pretraining run on [model]. "" when those keys agree."""
    if not isinstance(saved, dict):
        return ""
    finetune = bool((saved.get("finetune") or {}).get("base") or (given.get("finetune") or {}).get("base"))
    keys = [("finetune", "base"), ("finetune", "method")] if finetune else []
    if finetune and "lora" in ((given.get("finetune") or {}).get("method"), (saved.get("finetune") or {}).get("method")):
        keys += [("lora", k) for k in sorted(set(saved.get("lora") or {}) | set(given.get("lora") or {}))]
    if not finetune:
        keys += [("model", k) for k in sorted(set(saved.get("model") or {}) | set(given.get("model") or {}))]
    diffs = []
    for section, key in keys:
        old, new = (saved.get(section) or {}).get(key), (given.get(section) or {}).get(key)
        if old != new:
            diffs.append(f"{section}.{key}: saved {old!r}, given {new!r}")
    return "; ".join(diffs)


def load(path: Path, model, optimizer, config: dict | None = None) -> tuple[dict, dict]:
    """Restore model and optimizer in place (collective); return (train_state, this rank's rank_state).

    A missing, truncated or foreign checkpoint (other model shape) is a one-line UserError naming the folder; with
    `config` (this run's `TrainConfig.to_dict()`) it names what differs from the config saved in the checkpoint
    (`shape_differences`: the LoRA settings and base of a finetuning run, the model of a pretraining run)."""
    path = Path(path)
    train_state_file = path / TRAIN_STATE
    if not path.is_dir():
        raise UserError(f"{path}: --resume: no such checkpoint folder")
    train_state = read_json(train_state_file)
    needed = {"step", "scheduler", "spike_guard"}
    if needed - set(train_state):
        raise UserError(f"{train_state_file}: expected a checkpoint state with {', '.join(sorted(needed))}")
    if not (path / ".metadata").is_file():  # checked here: DCP would log a traceback before raising
        raise UserError(f"{path / '.metadata'}: missing; not a complete DCP checkpoint")
    model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIONS)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=LOAD_OPTIONS)
    except (Exception, CheckpointException) as e:  # DCP's wrapper of every rank's error (a BaseException)
        saved_cfg = train_state.get("config") if isinstance(train_state.get("config"), dict) else {}
        diffs = shape_differences(saved_cfg, config) if config is not None else ""
        if diffs:
            hint = f"; the checkpoint differs from this run's config: {diffs}"
        elif (saved_cfg.get("finetune") or {}).get("base"):
            ft = saved_cfg["finetune"]
            hint = f"; it was saved finetuning {ft['base']} ({ft.get('method')}, lora {saved_cfg.get('lora')})"
        else:
            saved = saved_cfg.get("model")
            hint = f"; it was saved with model {saved}" if saved else ""
        raise UserError(f"{path}: cannot restore this checkpoint into the configured model and optimizer "
                        f"({_short(e)}){hint}") from None
    # Same layout: each process takes its own file. Another number of processes: DCP has resharded the model and
    # optimizer above; the loader position is global (the same on every rank), so rank 0's serves everyone.
    same = train_state.get("world_size") == _world()
    rank_file = path / f"rank_{_rank() if same else 0:05d}.pt"
    try:
        rank_state = torch.load(rank_file, weights_only=True)
    except Exception as e:  # missing or truncated; weights_only refuses a file that needs code
        raise UserError(f"{rank_file}: cannot read the process state ({_short(e)})") from None
    rng = rank_state.pop("rng")
    if same:  # RNG streams are per process: only meaningful in the layout that produced them
        set_rng_state(rng)
    return train_state, rank_state
