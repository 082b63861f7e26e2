"""A trained run as one ONNX file that carries its own preprocessing, checked against PyTorch.

The exported graph takes images scaled to 0-1, shape (batch, channels, side, side), any batch size,
and normalises them with the training set's statistics itself, so a deployment needs no numbers from
the run directory. The class names, statistics and input size also travel in the file's metadata.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .runs import atomic_write, is_training, load_model, read_metrics

INPUT, OUTPUT = "image", "logits"
MIN_OPSET = 18  # the oldest operator set torch's (dynamo) exporter writes
MIN_TORCH = "2.7"  # the first torch whose exporter takes a dynamic batch and batch norms (the extra asks for it)


class Preprocessed(nn.Module):
    """A model with its run's normalisation in front: it takes images scaled to 0-1."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.mean) / self.std)


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime agrees with PyTorch."""

    path: Path
    input_shape: tuple[str | int, ...]
    max_abs_diff: float | None  # None when not checked
    skipped: bool = False  # the check was turned off (check=False), rather than ONNX Runtime missing
    opset: int | None = None  # the ONNX operator set the file uses

    def text(self) -> str:
        shape = "x".join(str(d) for d in self.input_shape)
        lines = [f"wrote {self.path} (ONNX opset {self.opset}; input {INPUT!r}: {shape} float32 scaled to 0-1, "
                 f"output {OUTPUT!r})"]
        if self.skipped:
            lines.append("not checked against PyTorch: the check was skipped (--no-check)")
        elif self.max_abs_diff is None:
            lines.append("not checked: install onnxruntime to compare it with PyTorch")
        else:
            lines.append(f"ONNX Runtime matches PyTorch: largest logit difference {self.max_abs_diff:.2e}")
        return "\n".join(lines)


def load_for_export(run_dir: str | Path | None, pretrained: str | None, out: str | Path | None,
                    suffix: str) -> tuple[nn.Module, dict, Path]:
    """The model and config to export, a run's or published weights', and where the file goes:
    ``out`` (a folder: the default name in it), else ``RUN_DIR/model.SUFFIX`` or ``MODEL-TAG.SUFFIX``."""
    if pretrained:
        from .pretrained import load_published

        model, config = load_published(pretrained)
        name = f"{config['model']}-{config['weights']}{suffix}"
    else:
        model, config = load_model(run_dir)
        name = f"model{suffix}"
        if is_training(Path(run_dir)):  # what is exported is a snapshot: say of which step
            rows = read_metrics(Path(run_dir), missing_ok=True)
            step = f" at step {rows[-1]['step']:,}" if rows else ""
            print(f"note: {run_dir} is still training; this exports the weights it last saved{step}", file=sys.stderr)
    if out is None:
        return model, config, Path(name) if pretrained else Path(run_dir) / name
    return model, config, Path(out) / name if Path(out).is_dir() else Path(out)  # a folder: the file goes in it


def export_onnx(run_dir: str | Path | None, out: str | Path | None = None, check: bool = True, tolerance: float = 1e-3,
                pretrained: str | None = None, opset: int | None = None) -> ExportReport:
    """Write the run's model as ONNX (default ``RUN_DIR/model.onnx``) and check it with ONNX Runtime.

    ``pretrained="resnet50"`` (or ``"resnet50:IMAGENET1K_V1"``) exports torchvision's published
    weights instead (default ``MODEL-TAG.onnx``); their input is the centre crop, and the resize
    before it is named in the metadata. ``opset`` is the ONNX operator set (18 or later, the oldest
    torch's exporter writes; default: its own choice). Raises RuntimeError when the exporter's packages are
    missing or the check finds the logits differ by more than ``tolerance`` times their size (at
    least 1); the file is only put in place once it is complete and checked.
    """
    if not exporter_ready():
        # torch 2.4 has no dynamic_shapes for it; in 2.5 and 2.6 it fails on every batch norm.
        raise RuntimeError(f"ONNX export needs torch {MIN_TORCH} or later, whose exporter handles these models, not "
                           f"{torch.__version__}: pip install 'resnetlab[export]' brings one")
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it; asking here gives a clear message)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install 'resnetlab[export]'") from None
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:  # the exporter would write 18 without a word
        raise ValueError(f"--opset must be from {MIN_OPSET}, the oldest torch's exporter writes, to {newest}, the newest the "
                         f"installed onnx knows, not {opset} (torch may not convert to the newest few yet; leave --opset "
                         "out for the exporter's own choice)")
    model, config, path = load_for_export(run_dir, pretrained, out, ".onnx")
    if path.suffix.lower() != ".onnx":  # x.ONNX too, as .KERAS and .H5 are taken
        raise ValueError(f"the export goes to a .onnx file, not {path.name}")
    wrapped = Preprocessed(model, config["mean"], config["std"]).eval()
    side, channels = config["image_size"], config["channels"]
    example = torch.rand(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    report = ExportReport(path, ("batch", channels, side, side), None, skipped=not check)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            try:
                program = torch.onnx.export(
                    wrapped, (example,), input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                    **({"opset_version": opset} if opset is not None else {}),
                )
            except Exception as e:
                if opset is None:
                    raise
                # Written at one opset, then converted: the converter does not reach every other.
                raise ValueError(f"the exporter could not convert the model to opset {opset} ({e}); leave --opset "
                                 "out for the exporter's own choice") from e
        proto = program.model_proto
        report.opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        if opset is not None and report.opset != opset:
            raise ValueError(f"the exporter could not convert the model to opset {opset} (it gave {report.opset}); "
                             "leave --opset out for the exporter's own choice")
        onnx.helper.set_model_props(proto, {
            "resnetlab.model": config["model"],
            "resnetlab.classes": json.dumps(config["classes"]),
            "resnetlab.mean": json.dumps(config["mean"]),
            "resnetlab.std": json.dumps(config["std"]),
            "resnetlab.input": f"{channels}x{side}x{side} float32 scaled to 0-1, normalised inside the graph"
            + (f"; resize the shorter side to {config['resize_size']} and crop the centre first" if config.get("resize_size") else ""),
        })
        onnx.save(proto, tmp)
        if check:
            compared = _compare(tmp, wrapped, channels, side)
            if compared is not None:
                diff, scale = compared
                # Relative to the logits' size: an untrained 1000-layer net's logits reach millions.
                if not diff <= tolerance * max(1.0, scale):  # NaN compares false either way: it fails too
                    raise RuntimeError(f"ONNX Runtime and PyTorch disagree by {diff:.2e} on logits up to {scale:.3g} "
                                       f"(over {tolerance:g} of that); nothing written")
                report.max_abs_diff = diff

    atomic_write(path, write)
    return report


def exporter_ready() -> bool:
    """Whether this torch's ONNX exporter handles these models: torch 2.7 or later (its pre-releases too,
    which NVIDIA's containers carry)."""
    return torch.__version__ >= f"{MIN_TORCH}.0a0"


@torch.no_grad()
def _compare(path: str, model: nn.Module, channels: int, side: int) -> tuple[float, float] | None:
    """(largest difference, largest size) of the logits of ONNX Runtime and PyTorch on a few random images."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.rand(5, channels, side, side, generator=torch.Generator().manual_seed(1))  # not the export's batch size
    (logits,) = session.run([OUTPUT], {INPUT: x.numpy()})
    expected = model(x)
    return float((torch.from_numpy(logits) - expected).abs().max()), float(expected.abs().max())
