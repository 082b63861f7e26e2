"""The run directory under damage: crashes mid-write, locks, and files that are not what they should be."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FASHION, fails_cleanly, with_files_limited_to
from resnetlab import runs
from resnetlab.models import create_model

CONFIG = {"model": "resnet8", "model_kwargs": {"num_classes": 10, "in_chans": 1},
          "classes": [str(i) for i in range(10)], "channels": 1, "image_size": 28, "mean": [0.5], "std": [0.25]}


def a_run(path, model="resnet8", config=CONFIG):
    """A run directory holding ``config`` and ``model``'s untrained weights."""
    path.mkdir(parents=True)
    runs.write_json(path / runs.CONFIG, config)
    runs.save_weights(create_model(model, **config["model_kwargs"]), path)
    return path


def test_a_file_is_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Renamed before its data reach the disk, a power cut can leave an empty file where the old one was."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.stat(a).st_ino)), real_replace(a, b)))
    runs.write_json(tmp_path / "a.json", {"x": 1})
    written = os.stat(tmp_path / "a.json").st_ino
    assert ("fsync", written) in events and events.index(("fsync", written)) < events.index(("replace", written))


def test_a_metrics_row_is_on_disk_when_it_is_appended(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    runs.append_metrics(tmp_path, {"epoch": 1, "step": 4, "train_loss": 2.0, "train_acc": 0.1})
    assert os.stat(tmp_path / runs.METRICS).st_ino in synced


def test_a_full_disk_while_appending_metrics_names_the_file(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(runs.RunError, match=r"metrics.jsonl \(No space left on device\); is the disk full\?"):
        runs.append_metrics(tmp_path, {"epoch": 1, "step": 4, "train_loss": 2.0, "train_acc": 0.1})


def test_a_read_only_folder_is_refused_by_name(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runs.tempfile, "mkstemp", read_only)
    with pytest.raises(runs.RunError, match=r"could not write .*eval.json \(Read-only file system\)"):
        runs.write_json(tmp_path / "eval.json", {})


@pytest.mark.parametrize("tail", [b'{"epoch": 2, "step": 8, "train_lo', b"\0" * 64, b"\xff\xfe\x00\x9c"])
def test_a_last_metrics_line_cut_short_or_garbled_is_passed_over(tmp_path, tail):
    """A kill mid-write cuts the row; a power cut can leave zeros or old disk blocks instead."""
    row = {"epoch": 1, "step": 4, "train_loss": 2.0, "train_acc": 0.1}
    runs.append_metrics(tmp_path, row)
    with open(tmp_path / runs.METRICS, "ab") as f:
        f.write(tail)
    assert runs.read_metrics(tmp_path) == [row]
    with open(tmp_path / runs.METRICS, "ab") as f:
        f.write(b"\n")  # a whole line that is not a row is damage, named
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not valid JSON"):
        runs.read_metrics(tmp_path)


def test_the_lock_names_the_process_holding_it(tmp_path):
    held = runs.RunLock(tmp_path)
    with pytest.raises(runs.RunError, match=rf"is being trained by another process \(pid {os.getpid()} on "):
        runs.RunLock(tmp_path)
    held.release()
    runs.RunLock(tmp_path).release()


def test_a_run_being_trained_is_known_by_its_lock_without_taking_it(tmp_path):
    assert not runs.is_training(tmp_path)  # no .lock at all
    held = runs.RunLock(tmp_path)
    assert runs.is_training(tmp_path) and runs.is_training(tmp_path)  # asked twice: the asking took nothing
    held.release()
    assert not runs.is_training(tmp_path)
    runs.RunLock(tmp_path).release()


def test_on_windows_every_process_locks_the_same_byte(tmp_path, monkeypatch):
    """msvcrt.locking locks bytes from the file's position, which "a+b" leaves at the end of the first
    holder's line: a second process locked another byte, and two runs trained into one directory."""
    import types

    locked = set()

    def locking(fd, mode, nbytes):  # Windows' byte-range locks, of one byte from the position
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        if offset in locked:
            raise OSError(errno.EACCES, "Permission denied")
        locked.add(offset)

    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(locking=locking, LK_NBLCK=2))
    with monkeypatch.context() as on_windows:  # only around the locks: pytest's own paths need the real os.name
        on_windows.setattr(os, "name", "nt")
        first = runs.RunLock(tmp_path)
        try:
            runs.RunLock(tmp_path).release()
            refused = ""
        except runs.RunError as e:
            refused = str(e)
        first.release()
    assert "being trained by another process" in refused and locked == {0}


def test_a_lock_left_by_a_killed_process_is_no_lock(tmp_path):
    code = (f"import os, signal; from pathlib import Path; from resnetlab.runs import RunLock; "
            f"RunLock(Path({str(tmp_path)!r})); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert (tmp_path / ".lock").exists()
    runs.RunLock(tmp_path).release()


def test_a_filesystem_without_locks_trains_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    """NFS without its lock daemon answers ENOLCK: no other process holds the run, so training goes on."""
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    runs.RunLock(tmp_path).release()
    assert "note: could not lock" in capsys.readouterr().err


def test_a_run_directory_that_cannot_be_written_is_refused_by_name(tmp_path, monkeypatch):
    real_open = open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(runs.RunError, match=r"cannot train into .* \(Read-only file system\): give an --out you can write to$"):
        runs.RunLock(tmp_path)  # a new run: there is nothing to copy yet
    (tmp_path / runs.CONFIG).write_text("{}")
    with pytest.raises(runs.RunError, match=r"cannot train into .* \(Read-only file system\): copy the run"):
        runs.RunLock(tmp_path)  # resuming one


@pytest.mark.parametrize("content, match", [
    (b"\x89PNG\r\n\x1a\n\0\0", "is not valid JSON"),
    (b"[1, 2]", r"is not a resnetlab run's config \(not a JSON object\)"),
    (json.dumps({**CONFIG, "classes": 10}).encode(), r"is damaged: classes is not of the kind"),
    (json.dumps({**CONFIG, "model_kwargs": [1], "mean": 0.5}).encode(), r"is damaged: mean, model_kwargs are not"),
    # Inputs are divided by std: a zero gave NaN answers, and an accuracy of chance, without a word.
    (json.dumps({**CONFIG, "std": [0.0]}).encode(), r"is damaged: mean and std must each hold a finite number for each "
                                                     r"of its 1 channel\(s\), no std 0; .* std \[0.0\]"),
    (json.dumps({**CONFIG, "mean": [None]}).encode(), r"is damaged: mean and std must each hold"),
    (json.dumps({**CONFIG, "std": [0.3, 0.3]}).encode(), r"is damaged: mean and std must each hold"),
])
def test_a_damaged_config_is_one_clear_error(tmp_path, content, match):
    run = a_run(tmp_path / "run")
    (run / runs.CONFIG).write_bytes(content)
    with pytest.raises(runs.RunError, match=match):
        runs.load_model(run)


def test_a_config_naming_other_classes_than_the_model_scores_is_refused_for_every_command(tmp_path, capsys):
    run = a_run(tmp_path / "run", config={**CONFIG, "classes": ["a", "b", "c", "d", "e"]})
    with pytest.raises(runs.RunError, match=r"config.json names 5 classes, but the model in .* scores 10"):
        runs.load_model(run)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28), 90).save(image)
    for argv in (("predict", run, image), ("export", run, "-o", tmp_path / "m.keras")):
        fails_cleanly(capsys, *argv, match="names 5 classes, but the model")
    assert not (tmp_path / "m.keras").exists()


def test_a_finished_run_whose_weights_were_deleted_says_so(tmp_path):
    run = a_run(tmp_path / "run")
    (run / runs.WEIGHTS).unlink()
    with pytest.raises(runs.RunError, match="has not finished an epoch"):
        runs.load_model(run)
    runs.append_metrics(run, {"epoch": 1, "step": 10, "train_loss": 2.0, "train_acc": 0.3})
    with pytest.raises(runs.RunError, match="has not finished an epoch"):  # killed between the row and the save
        runs.load_model(run)
    (run / runs.CHECKPOINT).write_bytes(b"saved with the weights")
    with pytest.raises(runs.RunError, match=r"has no model.safetensors, though its metrics.jsonl records 1 epoch: "
                                            r"the file was deleted or moved, or the run was killed while saving it"):
        runs.load_model(run)


def test_the_command_line_says_a_damaged_config_in_one_line(tmp_path, capsys):
    run = a_run(tmp_path / "run")
    (run / runs.CONFIG).write_bytes(b"\xff\xd8\xff\xe0 a photo saved over it")
    fails_cleanly(capsys, "eval", run, "--device", "cpu", match="config.json is not valid JSON")


def test_a_config_that_is_a_folder_is_one_clear_error(tmp_path):
    run = a_run(tmp_path / "run")
    (run / runs.CONFIG).unlink()
    (run / runs.CONFIG).mkdir()
    with pytest.raises(runs.RunError, match=r"config.json cannot be read \(Is a directory\)"):
        runs.read_config(run)


def test_weights_of_another_model_and_a_checkpoint_that_is_not_one_are_named(tmp_path):
    run = a_run(tmp_path / "run")
    runs.save_weights(create_model("resnet14", **CONFIG["model_kwargs"]), run)
    with pytest.raises(runs.RunError, match="does not hold resnet8 weights"):
        runs.load_model(run)
    (run / runs.CHECKPOINT).write_bytes((run / runs.WEIGHTS).read_bytes())
    # The weights of the last finished epoch are what is left: said, with how to go on from them.
    with pytest.raises(runs.RunError, match=r"cannot be read as a training checkpoint \(damaged, cut "
                                            r"short or not one\); the run's model.safetensors .* still evaluates, and a new "
                                            r"run can start from it: --weights .*run/model.safetensors$"):
        runs.load_checkpoint(run)


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = a_run(tmp_path / "run")
    torch.save({"model": Payload()}, run / runs.CHECKPOINT)
    with pytest.raises(runs.RunError, match="holds Python objects a training checkpoint does not, which are not loaded"):
        runs.load_checkpoint(run)
    assert not marker.exists()


def test_damaged_gradient_norms_are_named(tmp_path):
    (tmp_path / runs.GRAD_NORMS).write_text('{"layers": [')
    with pytest.raises(runs.RunError, match="grad_norms.json is damaged"):
        runs.read_grad_norms(tmp_path)


def test_gradient_norms_from_the_checkpoints_step_on_are_dropped_for_a_resume(tmp_path):
    """The norms are written just before the checkpoint: a run killed between the two resumes from the
    checkpoint before, whose step and later ones it then records again, once each."""
    runs.write_json(tmp_path / runs.GRAD_NORMS, {"layers": ["conv1.weight"], "steps": [0, 4, 8, 12], "norms": [[1.0], [2.0], [3.0], [4.0]]})
    assert runs.read_grad_norms(tmp_path, 8) == {"layers": ["conv1.weight"], "steps": [0, 4], "norms": [[1.0], [2.0]]}
    assert runs.read_grad_norms(tmp_path)["steps"] == [0, 4, 8, 12]


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_a_run_from_before_later_recipe_fields_resumes(tmp_path):
    """adam_eps and decay_norm_and_bias came later: an older run's config lacks them, and gets what it trained with."""
    from resnetlab.train import Interrupted, TrainConfig, resume, train

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(TrainConfig(model="resnet8", limit_train=128, limit_test=64, batch_size=64, steps=4, device="cpu",
                          out=str(out), progress=False), stop_at=2)
    config = runs.read_config(out)
    for key in ("adam_eps", "decay_norm_and_bias"):
        del config["recipe"][key]
    for key in ("data_fingerprint", "processes", "cuda_graph", "grad_norm_every", "stop_on_divergence", "weights"):
        del config[key]
    runs.write_json(out / runs.CONFIG, config)
    resume(out, device="cpu", progress=False)
    assert [r["step"] for r in runs.read_metrics(out)] == [2, 4]


def test_written_files_take_the_users_umask(tmp_path):
    """Run files are shared as the user's other files are: 0o644 under umask 022, owner-only under 077."""
    from resnetlab.runs import write_json

    old = os.umask(0o077)
    try:
        write_json(tmp_path / "private.json", {"a": 1})
        os.umask(0o022)
        write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644


def test_a_run_directory_given_as_weights_names_its_weights_file(tmp_path, capsys):
    from resnetlab.cli import main

    run = a_run(tmp_path / "run")
    runs.save_weights(create_model("resnet8", **CONFIG["model_kwargs"]), run)
    assert main(["train", "--weights", str(run), "--steps", "1", "--out", str(tmp_path / "new")]) == 2
    assert f"{run} is a folder; the weights of the run it holds are {run / runs.WEIGHTS}" in capsys.readouterr().err
    assert main(["import", str(run)]) == 2
    assert f"{run} is a folder, not a Keras file" in capsys.readouterr().err


def test_a_negative_std_is_a_run_not_damage(tmp_path):
    """A Keras model that computes c - x on its input imports with a negative std (keras_weights)."""
    run = a_run(tmp_path / "run")
    (run / runs.CONFIG).write_text(json.dumps({**CONFIG, "std": [-0.5]}))
    assert runs.read_config(run)["std"] == [-0.5]



def test_weights_that_do_not_fit_on_the_disk_are_one_error_naming_the_file_and_leave_nothing(tmp_path):
    """safetensors' own writer reported a full disk as its SafetensorError, naming no file, and left its
    temporary file behind."""
    run_dir = a_run(tmp_path / "run")
    before = sorted(os.listdir(run_dir)), (run_dir / runs.WEIGHTS).read_bytes()
    said = with_files_limited_to(100_000, (
        "import sys\n"
        "from pathlib import Path\n"
        "from resnetlab import runs\n"
        "from resnetlab.models import create_model\n"
        "try:\n"
        "    runs.save_weights(create_model('resnet20'), Path(sys.argv[1]))\n"  # 1.1 MB
        "except runs.RunError as e:\n"
        "    print(e)\n"), run_dir)
    assert said.startswith(f"could not write {run_dir / runs.WEIGHTS} (File too large). What was saved before is kept"), said
    assert (sorted(os.listdir(run_dir)), (run_dir / runs.WEIGHTS).read_bytes()) == before


def test_loading_a_run_leaves_the_callers_random_draws_alone(trained_run):
    """The model is built (drawing its first weights) and then given the run's: the caller's generator,
    which a notebook's next cell or a sweep's next trial draws from, must not have moved."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    runs.load_model(trained_run)
    assert torch.equal(torch.rand(3), expected)


def test_a_loaded_run_is_ready_to_answer_in_evaluation_mode(trained_run):
    """A notebook's ``model(x)`` right after loading must use the saved batch-norm statistics: one image's
    logits are the same alone as in a batch, and the statistics are not moved by answering."""
    model, _ = runs.load_model(trained_run)
    assert not any(m.training for m in model.modules())
    x = torch.rand(8, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_change_of_arithmetic_is_judged_by_the_device_that_does_the_sums():
    from resnetlab.devices import arithmetic_change

    cpu = {"device": "cpu", "cpu": "AVX512", "threads": 1, "torch": "2.14.1", "python": "3.11"}
    gpu = {"device": "cuda", "cpu": "AVX2", "threads": 8, "torch": "2.14.1", "gpu": "NVIDIA H100", "cuda": "13.0", "cudnn": 91000}
    assert arithmetic_change(cpu, {**cpu, "python": "3.12"}) == {}  # Python does no tensor sums
    assert arithmetic_change(cpu, {**cpu, "threads": 2}) == {"threads": (1, 2)}
    assert arithmetic_change(cpu, gpu) == {"device": ("cpu", "cuda")}  # no thread hint for another device
    assert arithmetic_change(gpu, {**gpu, "threads": 2, "cpu": "AVX512"}) == {}  # the GPU's sums, not the CPU's
    assert arithmetic_change(gpu, {**gpu, "cudnn": 92000}) == {"cudnn": (91000, 92000)}
    for env in (cpu, gpu):  # another torch may pick other kernels on either
        assert arithmetic_change(env, {**env, "torch": "2.15.0"}) == {"torch": ("2.14.1", "2.15.0")}


def test_a_run_records_the_commit_it_ran_from_only_where_that_commit_holds_its_code(tmp_path):
    """An editable install keeps one version number from commit to commit: the commit tells runs apart.
    A copy of the package sitting in some other repository (a virtual environment inside a checkout)
    is not that repository's code, and records none."""
    import shutil
    from pathlib import Path

    from resnetlab import devices

    here = Path(devices.__file__).parent
    head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True)
    tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "__init__.py"], capture_output=True)
    revision = devices.source_revision()
    if head.returncode or tracked.returncode:  # an installed package, or no git: nothing to record
        assert revision is None
    else:
        assert revision.split("+")[0] == head.stdout.strip() and revision in (head.stdout.strip(), head.stdout.strip() + "+changes")

    repo = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("venv/\n")
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    copy = repo / "venv" / "resnetlab"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__"))
    found = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from resnetlab import devices; "
                            "print(devices.__file__, devices.source_revision())", str(copy.parent)], capture_output=True, text=True)
    assert found.stdout.split() == [str(copy / "devices.py"), "None"], found.stderr


def test_a_write_through_a_link_replaces_the_file_it_points_to_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    runs.atomic_write(link, lambda tmp: Path(tmp).write_text("new"))
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "sub" / "made.csv")
    runs.atomic_write(dangling, lambda tmp: Path(tmp).write_text("made"))
    assert dangling.is_symlink() and (tmp_path / "sub" / "made.csv").read_text() == "made"


def test_a_pipe_is_written_to_not_replaced(tmp_path):
    """/dev/stdout, a FIFO: renaming a file over it (as root) replaced the device with a file."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    runs.atomic_write(fifo, lambda path: Path(path).write_text("rows\n"))
    reader.join(10)
    assert got == ["rows\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)

