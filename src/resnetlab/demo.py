"""``make demo``: the whole job in about three minutes on two CPU cores.

Train resnet20 on real Fashion-MNIST, evaluate it, save a few test images as PNG files and
classify them as a user would their own, and draw the training curves.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from PIL import Image

# About 3 minutes on 2 cores: 4 epochs of 12,000 images (748 steps of 64 at ~300 img/s), plus evaluations.
DEMO = dict(model="resnet20", dataset="fashion-mnist", recipe="fast", epochs=4, limit_train=12_000)


def run_demo(out: Path, device: str = "cpu", data_dir: str | None = None) -> Path:
    """Run the demo into a new run directory under ``out`` and print where everything is.

    ``data_dir`` is where the Fashion-MNIST files are (default: where ``resnetlab data`` finds them)."""
    from .data import get_dataset
    from .devices import pick_device
    from .evaluate import evaluate_run
    from .plots import plot_runs
    from .predict import predict_images
    from .runs import load_model, out_folder
    from .train import TrainConfig, train

    out_folder(out, "the demo writes its run directory into it")  # found now, not after minutes of training
    run_dir = out / f"resnet20-fashion-mnist-{datetime.now():%Y%m%d-%H%M%S}"
    epochs = DEMO["epochs"]
    print(f"Training resnet20 on Fashion-MNIST ({DEMO['limit_train']:,} images, {epochs} epoch{'s' if epochs != 1 else ''}, "
          f"{device})")
    # Bars where someone watches, as train's own command draws them; a log gets the per-epoch lines.
    result = train(TrainConfig(**DEMO, data_dir=data_dir, device=device, out=str(run_dir), progress=sys.stderr.isatty()))

    test = get_dataset("fashion-mnist", split="test", root=data_dir)
    print(f"\nEvaluating on the {len(test):,} test images")
    report = evaluate_run(run_dir, device=device)
    print(report.text())

    image_dir = run_dir / "samples"
    image_dir.mkdir(exist_ok=True)
    paths = []
    for i in range(8):
        name = test.classes[int(test.labels[i])].replace("/", "-").replace(" ", "-")
        path = image_dir / f"{i}-{name}.png"
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(path)
        paths.append(path)
    print(f"\nPredicting {len(paths)} test images saved as PNG (file names give the true class)")
    dev = pick_device(device)
    model, config = load_model(run_dir, dev)
    for pred in predict_images(model, config, paths, top_k=3, device=dev):
        print(f"  {Path(pred.path).name:<24} {pred.ranked()}")

    curves = plot_runs([run_dir], run_dir / "curves")
    print("\nWhere everything is:")
    print(f"  run directory     {run_dir}")
    print(f"  weights           {run_dir / 'model.safetensors'}")
    print(f"  metrics           {run_dir / 'metrics.jsonl'}")
    print(f"  evaluation        {run_dir / 'eval.json'}, {run_dir / 'confusion.png'}")
    print(f"  training curves   {', '.join(str(p) for p in curves)}")
    print(f"  sample images     {image_dir}")
    print(f"\nTest accuracy {result.test_accuracy:.2%} after {result.seconds:.0f} s of training.")
    print(f"Next: resnetlab predict {run_dir} {image_dir}   (or YOUR_IMAGE.png)")
    print(f"  or: resnetlab serve {run_dir}     (a page to drop images on)")
    print(f"  or: resnetlab export {run_dir}    (ONNX, checked against PyTorch)")
    return run_dir
