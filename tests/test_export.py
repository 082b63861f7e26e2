"""ONNX export: the file ONNX Runtime runs gives the trained model's answers on real images."""

import json
import sys
from pathlib import Path

import pytest
import torch

from resnetlab import pretrained
from resnetlab.cli import main
from resnetlab.data import get_dataset
from resnetlab.export import MIN_TORCH, export_onnx, exporter_ready
from resnetlab.loader import normalize
from resnetlab.runs import load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed"),
    pytest.mark.skipif(not exporter_ready(), reason=f"ONNX export needs torch {MIN_TORCH} or later"),
]


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def test_onnx_runtime_gives_the_models_logits_on_real_test_images(run_dir, capsys):
    assert main(["export", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime matches PyTorch" in out
    path = run_dir / "model.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    model, config = load_model(run_dir)
    assert json.loads(meta["resnetlab.classes"]) == config["classes"]
    assert json.loads(meta["resnetlab.mean"]) == config["mean"] and json.loads(meta["resnetlab.std"]) == config["std"]

    test = get_dataset("fashion-mnist", split="test")
    images = test.images[:7]  # a batch size the export never saw
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"image": (images.float() / 255).numpy()})
    with torch.no_grad():
        expected = model(normalize(images, config["mean"], config["std"]))
    assert logits.shape == (7, 10)
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    assert torch.equal(torch.from_numpy(logits).argmax(1), expected.argmax(1))


def test_a_failed_check_leaves_the_previous_export_in_place(run_dir, tmp_path):
    path = tmp_path / "kept.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(RuntimeError, match="disagree"):
        export_onnx(run_dir, path, tolerance=0.0)  # no two runtimes agree to the last bit
    assert path.read_bytes() == b"an earlier export"
    assert not list(tmp_path.glob("*.tmp"))


def test_export_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["export", str(run_dir), "-o", str(tmp_path / "model.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if it were not installed
    assert main(["export", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'resnetlab[export]'" in err and "Traceback" not in err
    # torch 2.4 to 2.6's exporter fails on these models (no dynamic_shapes; then a batch norm converter's tuple).
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.6.0+cpu"))
    assert main(["export", str(run_dir), "-o", str(tmp_path / "old.onnx")]) == 2
    assert capsys.readouterr().err == ("error: ONNX export needs torch 2.7 or later, whose exporter handles these "
                                       "models, not 2.6.0+cpu: pip install 'resnetlab[export]' brings one\n")
    assert not (tmp_path / "old.onnx").exists()
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.7.0a0+79aa17489c.nv25.04"))
    assert exporter_ready()  # NVIDIA's containers carry pre-releases of the versions they name


@pytest.mark.slow
def test_a_deep_pre_activation_net_exports(tmp_path):
    """Barely trained, preact_resnet110's logits run to millions: the check scales with them."""
    from resnetlab.train import TrainConfig, train

    out = tmp_path / "deep"
    train(TrainConfig(model="preact_resnet110", limit_train=64, limit_test=32, batch_size=16, steps=2, device="cpu",
                      out=str(out), progress=False))
    report = export_onnx(out)
    assert report.max_abs_diff is not None and report.path.exists()


def test_export_published_weights(tmp_path, monkeypatch, capsys):
    """torchvision's published weights export like a run: normalisation inside, ImageNet's classes in the metadata."""
    import torchvision

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), hub / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setattr(pretrained, "_check_digest", lambda *args: None)  # a stand-in has not the published file's SHA-256
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--pretrained", "resnet18"]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    props = {p.key: p.value for p in onnx.load(tmp_path / "resnet18-IMAGENET1K_V1.onnx").metadata_props}
    assert json.loads(props["resnetlab.classes"]) == weights.meta["categories"]
    assert "resize the shorter side to 256 and crop the centre first" in props["resnetlab.input"]
    assert main(["export"]) == 2


def test_no_check_says_it_was_skipped_and_an_upper_case_suffix_is_taken(run_dir, tmp_path, capsys):
    path = tmp_path / "model.ONNX"  # as .KERAS and .H5 are taken
    assert main(["export", str(run_dir), "--no-check", "-o", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the check was skipped" in out and "install onnxruntime" not in out  # it is installed: importorskip above
    onnx.checker.check_model(onnx.load(str(path)))


def test_a_folder_as_the_output_gets_the_file_in_it(run_dir, tmp_path, capsys):
    (tmp_path / "d.onnx").mkdir()
    assert main(["export", str(run_dir), "-o", str(tmp_path / "d.onnx")]) == 0
    assert f"wrote {tmp_path / 'd.onnx' / 'model.onnx'} " in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(tmp_path / "d.onnx" / "model.onnx")))


def test_the_check_holds_the_logits_to_their_size(run_dir, tmp_path, monkeypatch):
    """1e-3 of the logits' size (at least 1): 0.05 apart fails on logits up to 1, passes on logits up to 100."""
    from resnetlab import export

    monkeypatch.setattr(export, "_compare", lambda *args: (0.05, 1.0))
    with pytest.raises(RuntimeError, match="disagree by 5.00e-02 on logits up to 1 "):
        export_onnx(run_dir, tmp_path / "far.onnx")
    assert not (tmp_path / "far.onnx").exists()
    monkeypatch.setattr(export, "_compare", lambda *args: (0.05, 100.0))
    assert export_onnx(run_dir, tmp_path / "near.onnx").max_abs_diff == 0.05


def test_the_newest_opset_onnx_knows_is_asked_of_the_converter(run_dir, tmp_path):
    """The range's top is taken: the converter may fall short of it, but the request is not refused up front."""
    newest = onnx.defs.onnx_opset_version()
    try:
        assert export_onnx(run_dir, tmp_path / "m.onnx", check=False, opset=newest).opset == newest
    except ValueError as e:
        assert "could not convert the model to opset" in str(e), e


def test_the_opset_is_said_and_can_be_chosen(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--opset", "18", "-o", str(tmp_path / "m.onnx")]) == 0
    assert "(ONNX opset 18; input 'image'" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    # The exporter would write 18 for 17 without a word; a Keras export has no check to skip, nor an opset.
    assert main(["export", str(run_dir), "--opset", "17", "-o", str(tmp_path / "old.onnx")]) == 2
    assert "--opset must be from 18, the oldest torch's exporter writes, to " in capsys.readouterr().err
    newest = onnx.defs.onnx_opset_version()
    assert main(["export", str(run_dir), "--opset", str(newest + 1), "-o", str(tmp_path / "new.onnx")]) == 2
    assert f"to {newest}, the newest the installed onnx knows, not {newest + 1} (torch may not" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--no-check", "-o", str(tmp_path / "m.keras")]) == 2
    assert "--no-check is for ONNX files; a Keras export has no opset and no check" in capsys.readouterr().err
    assert not (tmp_path / "old.onnx").exists() and not (tmp_path / "m.keras").exists()
    assert not (tmp_path / "new.onnx").exists()


def test_an_opset_the_converter_does_not_reach_writes_nothing(run_dir, tmp_path, capsys, monkeypatch):
    """The exporter writes its own opset and converts; where conversion falls short it may hand back its own
    after a logged traceback: refused, not written as if asked for."""
    import torch

    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, opset_version=None, **kwargs: real(*args, **kwargs))
    assert main(["export", str(run_dir), "--opset", "19", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "could not convert the model to opset 19 (it gave " in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_only_a_full_disk_is_called_one(tmp_path):
    import errno

    from resnetlab.runs import RunError, atomic_write

    def fails(error):
        def write(tmp):
            raise error
        return write

    path = tmp_path / "kept.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(RunError, match=r"\(No space left on device\); is the disk full\? What was saved before is kept"):
        atomic_write(path, fails(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(RunError) as refused:
        atomic_write(path, fails(PermissionError(errno.EACCES, "Permission denied")))
    assert str(refused.value) == f"could not write {path} (Permission denied). What was saved before is kept"
    assert path.read_bytes() == b"an earlier export" and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(RunError, match=r"\(Permission denied\)\. Nothing was written$"):
        atomic_write(tmp_path / "new.onnx", fails(PermissionError(errno.EACCES, "Permission denied")))


def test_a_run_still_training_is_exported_with_a_note_of_the_step(run_dir, tmp_path, capsys):
    import shutil

    from resnetlab.runs import RunLock, read_metrics

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    lock = RunLock(copy)  # as a training process holds it
    try:
        assert main(["export", str(copy), "--no-check", "-o", str(tmp_path / "m.onnx")]) == 0
    finally:
        lock.release()
    step = read_metrics(copy)[-1]["step"]
    assert f"note: {copy} is still training; this exports the weights it last saved at step {step:,}" in capsys.readouterr().err
    assert main(["export", str(copy), "--no-check", "-o", str(tmp_path / "m2.onnx")]) == 0
    assert "still training" not in capsys.readouterr().err

