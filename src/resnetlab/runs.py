"""The run directory: what a training run leaves behind, and how it is read back.

    RUN_DIR/config.json        everything that rebuilds the model and its preprocessing
    RUN_DIR/model.safetensors  the latest weights (safetensors: loading it runs no code)
    RUN_DIR/checkpoint.pt      optimizer, step, partial-epoch metrics: what --resume needs
    RUN_DIR/metrics.jsonl      one JSON line per epoch
    RUN_DIR/grad_norms.json    per-layer gradient norms every N steps, when asked for

Every file but metrics.jsonl is written to a temporary name, synced to disk and renamed into place, so
an interrupted write (a kill, a power cut, a full disk) never leaves a half file where a good one was;
metrics.jsonl gains a line an epoch, and a last line cut short by a kill is passed over when it is read.
A training process holds ``RUN_DIR/.lock`` while it runs, so that a second one cannot write into the
same directory.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from .errors import ResnetlabError
from .models import ResNet, UnknownModelError, create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
GRAD_NORMS = "grad_norms.json"
_REQUIRED_METRICS = ("epoch", "step", "train_loss", "train_acc")
_REQUIRED_CONFIG = {"model": str, "classes": list, "channels": int, "image_size": int, "mean": list,
                    "std": list}  # what rebuilds the model and its inputs
_REQUIRED_CHECKPOINT = {"model_name": str, "model": dict, "optimizer": dict, "step": int, "elapsed": float, "sums": dict,
                        "rng": torch.Tensor}


class RunError(ResnetlabError):
    """A run directory that is missing, incomplete or does not fit what is asked of it."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; a failed write (a full disk) is a
    RunError naming the file, and leaves what ``path`` held before.

    A symbolic link keeps its place: the file it points to is the one replaced. A device or a pipe
    (``/dev/stdout``) is written to as it is, having nothing to keep and no folder to rename in.
    """
    path = Path(path)
    if path.is_dir():  # refused before ``write``, which may take minutes
        raise RunError(f"could not write {path}: it is a directory; give a file name")
    if path.exists() and not path.is_file():
        try:
            write(str(path))
        except OSError as e:
            raise RunError(f"could not write {path} ({e.strerror or e})") from None
        return
    if path.is_symlink():  # to a file, or dangling: renaming onto the link would replace the link itself
        path = Path(os.path.realpath(path))
    kept = "What was saved before is kept" if path.exists() else "Nothing was written"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        umask = os.umask(0o022)  # read by setting it, then put back
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a run's files get what others do
        # On disk before the rename: else a power cut can leave the new name on an empty file.
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except OSError as e:
        blocking = next((folder for folder in path.parents if folder.is_file()), None)
        if blocking is not None:  # mkdir's "File exists" would name neither the file nor the remedy
            raise RunError(f"could not write {path}: {blocking} is a file, where a folder is needed. {kept}") from None
        reason = e.strerror or str(e).splitlines()[0]
        # No errno: a writer's own report (torch.save's "unexpected pos"), which is how a full disk reaches it.
        hint = "; is the disk full?" if e.errno in (errno.ENOSPC, None) else "."
        raise RunError(f"could not write {path} ({reason}){hint} {kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _fsync(path: str | Path, directory: bool = False) -> None:
    """Flush ``path`` to the disk; for a directory (where the renamed entry lives), where the system allows it."""
    try:
        fd = os.open(path, (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not directory:  # Windows and some filesystems cannot sync a directory; the file is what matters
            raise


def out_folder(out: str | Path, holds: str) -> Path:
    """``--out`` as a Path, refused before any work when it names a file; ``holds`` says what the folder is for."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: {holds}")
    return out


def remove_partial_writes(run_dir: Path) -> None:
    """Delete the temporary files of writes a killed process left half done (``.NAME.*.tmp``)."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# What a lock taken without waiting fails with when another process holds it (EDEADLK: Windows' msvcrt).
_LOCK_HELD = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK)


class RunLock:
    """An exclusive lock on a run directory (made if need be), held by the process training into it
    until ``release``; the operating system drops it if the process dies, so a killed run leaves no
    stale lock. Where the filesystem has no locks (NFS without its lock daemon) it locks nothing, and
    says so."""

    def __init__(self, run_dir: Path) -> None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / ".lock", "a+b")
        except OSError as e:
            what = ("copy the run to a folder you can write to, and train there" if (run_dir / CONFIG).is_file()
                    else "give an --out you can write to")
            raise RunError(f"cannot train into {run_dir} ({e.strerror or e}): {what}") from None
        try:
            if os.name == "nt":
                import msvcrt

                self._file.seek(0)  # msvcrt locks bytes from the position, which "a+" puts at the end: byte 0 for all
                msvcrt.locking(self._file.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in _LOCK_HELD:
                print(f"note: could not lock {run_dir} ({e.strerror or e}); make sure no other process trains "
                      "into it", file=sys.stderr)
                return
            holder = self._holder()
            self._file.close()
            # Said for --resume as much as for a new run's --out: one process trains a run at a time.
            raise RunError(f"{run_dir} is being trained by another process{holder}; wait for it to end "
                           "(a new run can go to another --out)") from None
        try:  # who holds it, for the message a second process gets
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._file.flush()
        except OSError:
            pass

    def _holder(self) -> str:
        try:
            self._file.seek(0)
            pid, host = self._file.read(200).decode().split()
        except (OSError, ValueError):  # from an older version (empty), or unreadable while locked (Windows)
            return ""
        return f" (pid {pid} on {host})"

    def release(self) -> None:
        self._file.close()  # closing the file releases the lock


def is_training(run_dir: Path) -> bool:
    """Whether a process holds ``run_dir``'s lock, training into it now (False where locks are not
    known: no .lock, Windows, a filesystem without them). Reads; never takes the lock for long."""
    if os.name == "nt":
        return False
    import fcntl

    try:
        with open(Path(run_dir) / ".lock", "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # closing the file lets it go
    except OSError as e:
        return e.errno in _LOCK_HELD
    return False


def to_json(data: object, indent: int | None = None) -> str:
    """``data`` as strict JSON, a float that is not finite (a diverged run's loss) as null: Python's
    own NaN and Infinity are not JSON, and a browser's ``JSON.parse`` or jq refuses them."""
    try:
        return json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_or_none(data), indent=indent, allow_nan=False)


def _finite_or_none(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: Path, data: object, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (see ``to_json``; indented unless ``indent`` is None), atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(to_json(data, indent=indent) + "\n"))


def data_seed(config: dict) -> int:
    """The seed that chose a run's data (a folder's held-out images, --limit draws): runs from before
    ``data_seed`` was recorded drew them with their own seed."""
    return config.get("data_seed", config["seed"])


def read_config(run_dir: str | Path) -> dict:
    """The run's config.json, or a RunError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run directory ({'a file' if run_dir.exists() else 'it does not exist'})")
    path = run_dir / CONFIG
    if not path.exists():
        raise RunError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    try:
        config = json.loads(path.read_bytes())
    except ValueError as e:  # UnicodeDecodeError too: a binary file saved over it
        raise RunError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise RunError(f"{path} cannot be read ({e.strerror or e})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} is not a resnetlab run's config (not a JSON object)")
    missing = [k for k in _REQUIRED_CONFIG if k not in config]
    if missing:
        raise RunError(f"{path} is not a resnetlab run's config (it has no {', '.join(missing)})")
    # Checked here so that an edited or damaged config fails by name, not deep inside model building.
    wrong = [k for k, kind in _REQUIRED_CONFIG.items() if not isinstance(config[k], kind)]
    wrong += ["model_kwargs"] if not isinstance(config.get("model_kwargs", {}), dict) else []
    if wrong:
        raise RunError(f"{path} is damaged: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not of the "
                       "kind a run's config holds")
    # Every input is divided by std: a zero (or a null, NaN) would turn every answer into NaN without a word.
    # A negative one is legitimate: a Keras model computing c - x on its input imports as one.
    statistics = (config["mean"], config["std"])
    if not all(len(s) == config["channels"] and all(isinstance(v, (int, float)) and math.isfinite(v) for v in s)
               for s in statistics) or 0 in config["std"]:
        raise RunError(f"{path} is damaged: mean and std must each hold a finite number for each of its "
                       f"{config['channels']} channel(s), no std 0; it holds mean {config['mean']} and std {config['std']}")
    return config


LAYOUT_KEY = "resnetlab.layout"  # model.safetensors' metadata: what the tensors' shapes do not tell


def model_layout(model: nn.Module) -> dict[str, object]:
    """How ``model`` computes with weights of the same shapes: its block order, its shortcut mixing and,
    for bottlenecks, where the stride is. Weights trained one way load without complaint into another
    (a paper-layout ResNet-50's into torchvision's) and answer differently, so they are written down."""
    from .blocks import Bottleneck

    model = _plain_model(model)
    layout: dict[str, object] = {key: getattr(model, key) for key in ("order", "mixing") if hasattr(model, key)}
    bottlenecks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    if bottlenecks:
        layout["stride_in_1x1"] = any(b.conv1.stride != (1, 1) for b in bottlenecks)
    return layout


def save_weights(model: nn.Module, run_dir: Path) -> None:
    """Write the model's state (parameters and BN statistics) to model.safetensors, with its
    ``model_layout`` in the file's metadata."""
    state = {k: v.detach().contiguous().cpu() for k, v in _plain_model(model).state_dict().items()}
    # Serialised here and written as bytes: a full disk is then an OSError that atomic_write names, and a
    # kill leaves only atomic_write's temporary file (safetensors' save_file renames one of its own into place).
    data = save(state, metadata={"format": "pt", LAYOUT_KEY: json.dumps(model_layout(model), sort_keys=True)})
    atomic_write(run_dir / WEIGHTS, lambda tmp: Path(tmp).write_bytes(data))


def _plain_model(model: nn.Module) -> nn.Module:
    """The module under a torch.compile wrapper, so saved keys carry no ``_orig_mod.`` prefix."""
    return getattr(model, "_orig_mod", model)


def key_mismatch(own: Iterable[str], found: Iterable[str], source: object, model_name: str,
                 optional: Iterable[str] = ()) -> str | None:
    """What is wrong when the tensors ``found`` in ``source`` are not the ``own`` ones of ``model_name``
    (``optional`` ones may be missing), or None when they are."""
    own, found = set(own), set(found)
    missing, unexpected = sorted(own - found - set(optional)), sorted(found - own)
    if not missing and not unexpected:
        return None
    return (f"{source} does not hold {model_name} weights: {len(missing)} missing and {len(unexpected)} "
            f"unexpected tensors (first: {(missing or unexpected)[0]})")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path, model_name: str) -> None:
    """Load ``state`` strictly, turning a mismatch into one readable RunError."""
    problem = key_mismatch(_plain_model(model).state_dict(), state, source, model_name)
    if problem:
        raise RunError(problem)
    try:
        _plain_model(model).load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise RunError(f"{source} does not fit {model_name}: {first}") from None


def build_model(config: dict) -> ResNet:
    """The untrained model a run's config describes."""
    try:
        return create_model(config["model"], **config.get("model_kwargs", {}))
    except UnknownModelError:
        # Not one of resnetlab's: a model of the user's own, registered by code this process has not run.
        raise RunError(f"the run's model {config['model']!r} is none of resnetlab's: if your own code registers it "
                       "(register_model), import that code first (resnetlab --import MODULE COMMAND ..., or import it "
                       "in Python)") from None


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN or an infinity (a diverged run, a damaged file), or None."""
    return next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def load_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[ResNet, dict]:
    """The trained model of a run (in eval mode) and its config."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    path = run_dir / WEIGHTS
    if not path.exists():
        try:
            epochs = len(read_metrics(run_dir, missing_ok=True))
        except ValueError:  # a damaged metrics file is another matter: the weights are what is missing here
            epochs = 0
        if epochs and (run_dir / CHECKPOINT).exists():  # saved just before the weights
            raise RunError(f"{run_dir} has no {WEIGHTS}, though its {METRICS} records {epochs} epoch{'s' * (epochs > 1)}: "
                           "the file was deleted or moved, or the run was killed while saving it")
        raise RunError(f"{run_dir} has no {WEIGHTS} yet: the run has not finished an epoch")
    with torch.random.fork_rng(devices=[]):  # its first weights are overwritten: the caller's draws stay its own
        model = build_model(config)
    try:
        state = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise RunError(f"{path} is damaged or not a safetensors file ({e})") from None
    damaged = first_non_finite(state)
    if damaged:
        raise RunError(f"{path}: {damaged} holds values that are not finite numbers (NaN or infinite); "
                       "the run diverged, or the file is damaged")
    load_state(model, state, path, config["model"])
    if model.num_classes != len(config["classes"]):  # answers would name the wrong classes, or none
        raise RunError(f"{run_dir / CONFIG} names {len(config['classes'])} classes, but the model in {path} scores "
                       f"{model.num_classes}: the config was edited, or comes from another run")
    model.pretrained_cfg = pretrained_cfg(config["channels"], config["image_size"], config.get("resize_size"),
                                          config["mean"], config["std"], len(config["classes"]))
    return model.to(device).eval(), config


def pretrained_cfg(channels: int, image_size: int, resize_size: int | None, mean: Sequence[float],
                   std: Sequence[float], num_classes: int) -> dict:
    """A model's input preprocessing as timm's ``pretrained_cfg``: timm's
    ``resolve_model_data_config(model)`` and ``create_transform`` then build the input resnetlab feeds
    it, where timm's defaults (bicubic, 224, crop 0.875, ImageNet statistics) would not.

    ``resize_size`` is torchvision's shorter side before the centre crop; without one, images are
    squashed to the model's size, as ``data.load_image`` does.
    """
    return {
        "input_size": (channels, image_size, image_size),
        "interpolation": "bilinear",
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": image_size / resize_size if resize_size else 1.0,
        "crop_mode": "center" if resize_size else "squash",
        "num_classes": num_classes,
        "first_conv": "conv1",
        "classifier": "fc",
    }


def clear_unstarted(run_dir: Path) -> None:
    """Remove what a run writes before its first checkpoint (config, metrics, TensorBoard's events),
    so that a run that failed that early can start again in its directory. Nothing else is touched,
    and a directory whose config.json is not a resnetlab training run's is refused."""
    import shutil

    try:
        config = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        config = None
    if not (isinstance(config, dict) and "recipe" in config and "resnetlab" in config.get("versions", {})):
        raise RunError(f"{run_dir} holds a {CONFIG} that is not a resnetlab training run's; pick another --out")
    for name in (CONFIG, METRICS, GRAD_NORMS):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write the training state atomically."""

    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch.save's C++ writer reports a full disk so ("[enforce fail at ...] unexpected pos ...")
            if "unexpected pos" not in str(e):
                raise
            raise OSError("it stopped short") from None

    atomic_write(run_dir / CHECKPOINT, write)


def load_checkpoint(run_dir: Path) -> dict:
    """Read the training state; ``weights_only=True`` so the file cannot run code."""
    path = run_dir / CHECKPOINT
    if not path.exists() and (run_dir / WEIGHTS).exists():
        raise RunError(f"{run_dir} holds a model but no {CHECKPOINT} (an imported model, or a copy without it), so there is "
                       f"nothing to resume; to train it further, start a run from it: --weights {run_dir / WEIGHTS}")
    if not path.exists():
        raise RunError(f"{run_dir} has no {CHECKPOINT}: the run stopped before saving one, so there is nothing to "
                       f"resume; train again with --out {run_dir}")
    # What is left when the checkpoint is lost: the weights of the last finished epoch.
    instead = (f"; the run's {WEIGHTS} (its weights at the last finished epoch) still evaluates, and a new run can "
               f"start from it: --weights {run_dir / WEIGHTS}" if (run_dir / WEIGHTS).is_file() else "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on a foreign pickle's protocol, with its own paths
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file fails in many ways, which all mean the same to the user
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):  # an object weights_only refused
            raise RunError(f"{path} holds Python objects a training checkpoint does not, which are not loaded (loading "
                           f"them could run code): not a checkpoint resnetlab wrote{instead}") from None
        raise RunError(f"{path} cannot be read as a training checkpoint (damaged, cut short or not one){instead}") from None
    wrong = ([k for k, kind in _REQUIRED_CHECKPOINT.items() if not isinstance(checkpoint.get(k), kind)]
             if isinstance(checkpoint, dict) else ["anything"])
    if wrong:
        raise RunError(f"{path} is not a resnetlab training checkpoint, or is damaged ({', '.join(wrong)} missing or "
                       f"of the wrong kind){instead}")
    return checkpoint


def read_metrics(run_dir: str | Path, missing_ok: bool = False) -> list[dict]:
    """The per-epoch rows of ``RUN_DIR/metrics.jsonl``, oldest first.

    Raises ValueError naming the file when it is missing (unless ``missing_ok``), empty, or has a
    line that is not a JSON object of numbers (or nulls) with at least ``epoch``, ``step``, ``train_loss`` and
    ``train_acc``.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        if missing_ok:
            return []
        raise ValueError(f"{path} not found: not a training run, or no epoch has finished yet")
    rows = []
    # Bytes not UTF-8 (a power cut's leftovers) become replacement characters: not JSON, so a line of its own.
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines) and not text.endswith("\n"):
                break  # a row cut short when the run was killed mid-write: the rows before it stand
            raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
        missing = [k for k in _REQUIRED_METRICS if k not in row] if isinstance(row, dict) else list(_REQUIRED_METRICS)
        if missing:
            raise ValueError(f"{path}, line {n}: not a metrics row (missing {', '.join(missing)})")
        # A value is a number, or null where a diverged run's loss was not finite or a test score was skipped.
        wrong = [k for k, v in row.items() if not (v is None or isinstance(v, (int, float)) and not isinstance(v, bool))]
        if wrong:
            raise ValueError(f"{path}, line {n}: {', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not a number")
        rows.append(row)
    if not rows and not missing_ok:
        raise ValueError(f"{path} is empty: no epoch has finished yet")
    return rows


def append_metrics(run_dir: Path, row: dict) -> None:
    """Add one epoch's metrics to metrics.jsonl, synced to disk: the checkpoint written next counts on it."""
    path = run_dir / METRICS
    try:
        with open(path, "a") as f:
            f.write(to_json(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a row cut short is passed over when read, and written again on resume
        hint = "; is the disk full?" if e.errno == errno.ENOSPC else ""
        raise RunError(f"could not add to {path} ({e.strerror or e}){hint}") from None


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop metric lines written after ``last_step`` (a resumed run writes them again)."""
    rows = [r for r in read_metrics(run_dir, missing_ok=True) if r["step"] <= last_step]
    text = "".join(to_json(r) + "\n" for r in rows)
    atomic_write(run_dir / METRICS, lambda tmp: Path(tmp).write_text(text))


def read_grad_norms(run_dir: Path, up_to_step: int | None = None) -> dict:
    """Recorded gradient norms ``{"layers", "steps", "norms"}``, keeping steps before ``up_to_step``."""
    path = Path(run_dir) / GRAD_NORMS
    try:
        log = json.loads(path.read_bytes()) if path.exists() else {"layers": [], "steps": [], "norms": []}
    except ValueError as e:
        raise RunError(f"{path} is damaged ({e})") from None
    if up_to_step is not None:
        keep = [i for i, s in enumerate(log["steps"]) if s < up_to_step]
        log["steps"] = [log["steps"][i] for i in keep]
        log["norms"] = [log["norms"][i] for i in keep]
    return log
