"""The ``resnetlab`` command line.

Every command catches its errors at the top: one ``error: ...`` line and exit status 2, no
traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import ast
import errno
import itertools
import json
import os
import re
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

from . import __version__
from .ablations import STUDIES
from .devices import check_device_name
from .recipes import RECIPES


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON or as Python writes it where it parses (numbers, true,
    False, None, [0.5, 1], (0.5, 1)), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return key, value
    return key, list(parsed) if isinstance(parsed, tuple) else parsed  # a tuple as JSON would give it


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # argparse would name the function: "invalid _count value"
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _count(text: str) -> int:
    """A number of worker processes (``--workers``): 0 (none, the main process decodes) to 256."""
    value = _whole(text)
    if not 0 <= value <= 256:  # each is a process: 100,000 would hang the machine starting them
        raise argparse.ArgumentTypeError(f"must be from 0 to 256 worker processes, got {value}")
    return value


def _device(text: str) -> str:
    """A ``--device``: auto, cpu, cuda, cuda:N or mps."""
    try:
        return check_device_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _port(text: str) -> int:
    """A TCP port (``--port``): the socket would take 70000 modulo 65536 and listen on 4464."""
    value = _whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


DATA_DIR_HELP = "where the dataset files are (default: $RESNETLAB_DATA, Debian's folder, ~/.cache/resnetlab)"
DEVICE_HELP = "auto (default: CUDA, then MPS, then the CPU), cpu, cuda, cuda:N (the N-th GPU) or mps"


def _add_model_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--model-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, repeatable: order=bn_after_add, mixing=gate, gate_bias=-6, shortcut=B, "
                        "zero_init_residual=true (see resnetlab.create_model)")


def _add_run_flags(p: argparse.ArgumentParser) -> tuple[argparse._ArgumentGroup, ...]:
    """The flags every training run takes, ``train``'s and each experiment's: its data, recipe and
    run groups, returned for ``train`` to add its own flags to."""
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="fashion-mnist",
                      help="fashion-mnist (default), mnist, cifar10, cifar100, signs, imagenet or folder:PATH")
    data.add_argument("--data-dir", help=DATA_DIR_HELP)
    data.add_argument("--limit-train", type=int, metavar="N",
                      help="use the first N training examples (of a folder: N drawn with --data-seed); default: all")
    data.add_argument("--limit-test", type=int, metavar="N",
                      help="evaluate on the first N test examples (of a folder: N drawn with --data-seed); default: all")
    data.add_argument("--data-seed", type=int, default=0,
                      help="seed of a folder's held-out tenth and of the --limit draws from a folder (default 0): "
                           "runs of other --seed values train and test on the same images")
    recipe = p.add_argument_group("recipe (each flag overrides the recipe's value, its default)")
    recipe.add_argument("--epochs", type=float, help="passes over the training set")
    recipe.add_argument("--steps", type=int, help="iterations (instead of --epochs)")
    recipe.add_argument("--batch-size", type=int, metavar="N", help="images a step (the global batch under torchrun)")
    recipe.add_argument("--lr", type=float, help="peak learning rate")
    where = p.add_argument_group("run")
    where.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    where.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data order and augmentation (default 0)")
    return data, recipe, where


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``resnetlab train``: every run's, then the model, the rest of the recipe, the run
    directory and speed."""
    data, recipe, where = _add_run_flags(p)
    data.add_argument("--image-size", type=int, metavar="SIDE", help="resize images to this side (folder datasets: default 64, 224 with a scaling recipe; named datasets keep theirs unless told)")
    data.add_argument("--workers", type=_count, metavar="N", help="folder datasets: processes decoding images (default: one a CPU, up to 16)")
    model = p.add_argument_group("model")
    model.add_argument("--model", default="resnet20", help="any name `resnetlab models` lists (default resnet20)")
    _add_model_args(model)
    model.add_argument("--weights", metavar="TAG|FILE",
                       help="start from torchvision's ImageNet weights (DEFAULT or IMAGENET1K_V1, resnet18-152; IMAGENET1K_V2, resnet50-152), "
                            "Keras Applications' (KERAS; resnet50-152) or a weights file; normalises inputs with the "
                            "published weights' statistics")
    recipe.add_argument("--recipe", help=f"{', '.join(RECIPES)} (default fast; signs-adam for signs_resnet50, the notebook's)")
    recipe.add_argument("--weight-decay", type=float, help="weight decay: an L2 penalty of the weights (decoupled from the gradient with optimizer=adamw)")
    recipe.add_argument("--recipe-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="any other recipe field, repeatable: schedule=cosine, label_smoothing=0.1, momentum=0.95, "
                             "milestones=[0.3,0.6,0.9] (fractions of the run; multistep schedule), optimizer=adamw, "
                             "warmup_shape=linear (`resnetlab recipes NAME` lists them)")
    where.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/MODEL-DATASET-TIME)")
    where.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run")
    where.add_argument("--eval-every", type=int, default=1, metavar="EPOCHS",
                       help="evaluate on the test set every EPOCHS epochs, and at the end (default 1)")
    where.add_argument("--no-progress", action="store_true",
                       help="no progress bar, only the per-epoch lines (bars show only on a terminal, so a log "
                            "that stderr is piped into gets the lines alone)")
    speed = p.add_argument_group("speed")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--no-cuda-graph", action="store_true", help="on CUDA, run the step eagerly instead of replaying a CUDA graph")
    speed.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels where PyTorch has them (runs repeat bit for bit on the same machine "
                            "and CPU thread count; on a GPU, ops without one warn)")


def build_parser() -> argparse.ArgumentParser:
    """The ``resnetlab`` command line: its global flags and every command's parser."""
    parser = argparse.ArgumentParser(prog="resnetlab", description="Residual networks of He et al. 2015 and 2016.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import this Python module first (repeatable): one that registers models of your own "
                             "(resnetlab.models.register_model), so that commands can build them and their runs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*' (default *, every name)")
    p.add_argument("--pretrained", action="store_true", help="only the models with published ImageNet weights")

    p = sub.add_parser("recipes", help="list the training recipes with their hyperparameters and sources")
    p.add_argument("name", nargs="?", choices=list(RECIPES), metavar="RECIPE",
                   help="one recipe's every field, as --recipe-arg KEY=VALUE names them")

    p = sub.add_parser("data", help="find (or prepare) a dataset and show its splits, classes and image sizes")
    p.add_argument("dataset", help="fashion-mnist, mnist, cifar10, cifar100, signs, imagenet or folder:PATH")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--export", metavar="DIR", help="write a named dataset as an image folder: DIR/train/ and DIR/val/")
    p.add_argument("--limit-train", type=int, metavar="N", help="with --export: the first N training images")
    p.add_argument("--limit-test", type=int, metavar="N", help="with --export: the first N test images")

    p = sub.add_parser("summary", help="Keras-style model summary with multiply-adds")
    p.add_argument("model", help="a name `resnetlab models` lists, or a run directory")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="the input's shape (default: a run's own, else the model's channels at 224x224 for ImageNet "
                        "nets, 32x32 for CIFAR nets, 64x64 for signs_resnet50)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs (default the model's; 0: no classifier)")
    _add_model_args(p)

    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_train_flags(p)

    p = sub.add_parser("eval", help="evaluate a trained run on its test set or training images (or published weights "
                                    "on an ImageNet folder)")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run to evaluate (or --pretrained)")
    p.add_argument("--pretrained", metavar="MODEL[:TAG]",
                   help="evaluate published ImageNet weights instead of a run (resnet50, resnet50:IMAGENET1K_V1, "
                        "resnet50:KERAS), on --dataset imagenet or folder:PATH (the 1000 ImageNet class folders), "
                        "preprocessed as their publisher measured them")
    p.add_argument("--out", metavar="DIR", help="write eval.json (and a run's confusion matrix) here; default: "
                                                "the run directory, replacing its last evaluation")
    p.add_argument("--dataset", help="another dataset with the same classes (default: the run's)")
    p.add_argument("--data-dir", help="where the dataset files are (default: where the run found them)")
    p.add_argument("--limit-test", type=int, metavar="N",
                   help="evaluate on N images: a named dataset's first N, a folder's N drawn at random (seeded); "
                        "default: all (with --split train, those the run trained on)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="score the test images (default) or, unaugmented, those the run trained on: a gap between "
                        "the two is overfitting; writes eval-train.json and confusion-train.*")
    p.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    _add_view_flags(p)

    p = sub.add_parser(
        "predict", help="classify your own images with a trained run, or with published ImageNet weights",
        usage="resnetlab predict RUN_DIR IMAGE... | resnetlab predict --pretrained MODEL[:TAG] IMAGE...",
    )
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR IMAGE", help="a run directory, then images or folders of images")
    p.add_argument("--pretrained", metavar="MODEL[:TAG]",
                   help="use published ImageNet weights instead of a run, e.g. resnet50, resnet50:IMAGENET1K_V1 or "
                        "resnet50:KERAS (downloaded once); every positional argument is then an image")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="classes shown per image (default 3, or 5 with --pretrained)")
    p.add_argument("--csv", metavar="FILE", help="write the answers to FILE (path, then class and probability by rank) "
                                                 "instead of printing them; - writes the CSV to standard output")
    p.add_argument("--workers", type=_count, metavar="N", help="processes decoding images (default: one a CPU, up to 16, "
                                                            "for more than a batch of 64)")
    p.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    _add_view_flags(p)

    p = sub.add_parser("serve", help="a prediction page for a trained run, in your browser",
                       description="A prediction page for a trained run, in your browser; scripts POST one image "
                                   "a request to /predict (the file as the body, or a form's file; up to 20 MB) "
                                   "and get its top classes as JSON.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run to serve (or --pretrained)")
    p.add_argument("--pretrained", metavar="MODEL[:TAG]", help="serve published ImageNet weights instead of a run")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1, this machine "
                                                        "alone; 0.0.0.0, or '', lets other machines in)")
    p.add_argument("--port", type=_port, default=8000, help="the port to listen on (default 8000; 0: any free one)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes in each answer (default 5; a request's ?top_k=N, or form field top_k, for it alone)")
    p.add_argument("--device", default="cpu", type=_device, metavar="DEVICE",
                   help="cpu (default), auto, cuda, cuda:N or mps")
    _add_view_flags(p)

    p = sub.add_parser("import", help="read a Keras ResNet (the seed notebook's, or keras.applications') into a run directory")
    p.add_argument("file", help="the Keras file, e.g. the notebook's resnet50.h5")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create (default runs/FILE-NAME)")
    p.add_argument("--dataset", help="what `resnetlab eval` tests it on (default signs for the notebook's layout, "
                                     "imagenet for 1000 classes)")
    p.add_argument("--data-dir", help="where `resnetlab eval` finds the dataset's files, e.g. the notebook's datasets/ "
                                      "(default: the usual places, see `resnetlab data`)")
    p.add_argument("--classes", help="comma-separated output names (default 0, 1, ...: SIGNS's)")
    p.add_argument("--image-size", type=int, metavar="SIDE",
                   help="the side images are resized to, for a model whose input size is not fixed (default 224)")

    p = sub.add_parser("export", help="write a trained run as ONNX (checked with ONNX Runtime) or as a Keras model, "
                                      "normalisation inside")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="the run to export (or --pretrained)")
    p.add_argument("--pretrained", metavar="MODEL[:TAG]", help="export published ImageNet weights instead of a run")
    p.add_argument("--format", choices=["onnx", "keras"],
                   help="onnx (default), or keras: a file keras.models.load_model reads (.keras for Keras 3, "
                        "-o FILE.h5 for Keras 2 and 3)")
    p.add_argument("-o", "--out", metavar="FILE.onnx|FILE.keras|FILE.h5", help="default RUN_DIR/model.onnx (or .keras); a folder: that file in it")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX file's comparison with PyTorch")
    p.add_argument("--opset", type=int, metavar="N",
                   help="the ONNX operator set, 18 or later (default: the exporter's choice, printed when written)")

    p = sub.add_parser("diagram", help="draw a model's architecture to an SVG or PNG file (Graphviz)")
    p.add_argument("model", help="a name `resnetlab models` lists, or a run directory")
    p.add_argument("-o", "--out", metavar="FILE.svg|png", help="default MODEL.svg, or RUN_DIR/model.svg")
    p.add_argument("--expand", action="store_true", help="draw every block instead of collapsing identical ones")
    p.add_argument("--num-classes", type=int, metavar="N", help="classifier outputs (default the model's)")
    _add_model_args(p)

    p = sub.add_parser("plot", help="training curves of one or more runs (PNG, SVG and CSV)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the runs to draw, overlaid")
    p.add_argument("-o", "--out", metavar="NAME|DIR", help="write NAME.png, .svg and .csv, or DIR/curves.* into a folder "
                                                          "(default RUN_DIR/curves for one run, ./curves for several)")
    p.add_argument("--x", choices=["step", "epoch"], default="step", help="the horizontal axis (default step, as the papers plot)")

    p = sub.add_parser("bench", help="benchmarks against the typical PyTorch loop and torchvision")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    b = bench.add_parser("train", help="resnetlab's trainer against the typical script, same data and steps")
    b.add_argument("--model", default="resnet20", help="the model both loops train (default resnet20)")
    b.add_argument("--dataset", default="fashion-mnist", help="the data both loops read (default fashion-mnist)")
    b.add_argument("--data-dir", help=DATA_DIR_HELP)
    b.add_argument("--batch-size", type=int, default=128, metavar="N", help="images a step (default 128)")
    b.add_argument("--steps", type=int, default=200, help="steps of each loop, the first fifth (at most 10) untimed warm-up; at least 10 (default 200)")
    b.add_argument("--recipe", default="fast", help="the recipe both loops follow (default fast)")
    b.add_argument("--workers", type=_count, metavar="N", help="DataLoader workers of the typical loop (default: min(8, CPUs))")
    b.add_argument("--limit-test", type=int, metavar="N", help="the test images each loop evaluates (default: all)")
    b.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    b.add_argument("--compile", action="store_true", help="add a row with the model through torch.compile")
    b.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each contender N times, alternating; report the median (default 1)")
    b.add_argument("--results", default="benchmarks/results", metavar="DIR",
                   help="where the JSON result goes (default benchmarks/results)")
    b = bench.add_parser("model", help="model-step throughput against torchvision's model (synthetic data)")
    b.add_argument("--model", default="resnet50", help="a model torchvision also has (default resnet50)")
    b.add_argument("--batch-size", type=int, metavar="N", help="images a step (default 256 on CUDA, 8 elsewhere)")
    b.add_argument("--image-size", type=int, default=224, metavar="SIDE", help="the input's side (default 224)")
    b.add_argument("--steps", type=int, help="timed steps (default 50 on CUDA, 3 elsewhere)")
    b.add_argument("--compile", action="store_true", help="time both models through torch.compile")
    b.add_argument("--device", default="auto", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    b.add_argument("--results", default="benchmarks/results", metavar="DIR",
                   help="where the JSON result goes (default benchmarks/results)")
    b = bench.add_parser("decode", help="training crops from image files against torchvision's ImageFolder pipeline")
    b.add_argument("--folder", help="time your own images (default: synthetic JPEGs of ImageNet's and a phone's size)")
    # --image-size as in every other command; --size as this benchmark first named it.
    b.add_argument("--image-size", "--size", dest="size", type=int, default=224, metavar="SIDE",
                   help="crop side (default 224)")
    b.add_argument("--count", type=int, default=20, help="images of each size (default 20)")
    b.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="passes of each contender, alternating; report the median (default 3)")
    b.add_argument("--results", default="benchmarks/results", metavar="DIR",
                   help="where the JSON result goes (default benchmarks/results)")

    _add_reproduce_parsers(sub)

    p = sub.add_parser("demo", help="train resnet20 on Fashion-MNIST for a few minutes, evaluate, predict, plot")
    p.add_argument("--out", default="demo", metavar="DIR", help="the run directory goes in here (default demo)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--device", default="cpu", type=_device, metavar="DEVICE",
                   help="cpu (default), auto, cuda, cuda:N or mps")
    # `resnetlab train --help` opens with what train does, as the list of commands says it.
    for commands in (sub, bench):
        for action in commands._choices_actions:
            commands.choices[action.dest].description = commands.choices[action.dest].description or action.help
    return parser


def _add_reproduce_parsers(sub: argparse._SubParsersAction) -> None:
    """``resnetlab reproduce`` and its experiments (``cmd_reproduce`` runs them)."""
    parser = sub.add_parser("reproduce", help="the experiments that show why residual learning works")
    experiments = parser.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")

    def add(name: str, help: str, recipe: str = "he2016") -> argparse.ArgumentParser:
        p = experiments.add_parser(name, help=help, description=help)
        _add_run_flags(p)
        p.add_argument("--recipe", default=recipe, choices=list(RECIPES), help=f"training recipe (default {recipe}, the paper's)")
        p.add_argument("--recipe-arg", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any other recipe field, repeatable, as train takes it: warmup_steps=10 for a short run")
        p.add_argument("--out", default=f"reproduce/{name}", metavar="DIR",
                       help=f"where runs, figures and reports go (default reproduce/{name})")
        return p

    p = add("degradation", "plain and residual nets of growing depth: the 2015 paper's Figure 6")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56], metavar="D",
                   help="the depths of the plain and residual nets, 6n+2 (default: 20 32 44 56)")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="train each net with K seeds (--seed onwards; default 1)")

    p = add("depth", "test error and parameters of deeper ResNets: the 2015 paper's Table 6")
    p.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56, 110], metavar="D",
                   help="the depths of the residual nets, 6n+2 (default: 20 32 44 56 110)")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="train each net with K seeds (--seed onwards; default 3)")

    p = add("gradients", "gradient norms by layer of a plain and a residual net: do they vanish towards the input?")
    p.add_argument("--depth", type=int, default=56, metavar="D", help="the depth of the plain and residual net, 6n+2 (default 56)")
    p.add_argument("--every", type=int, metavar="STEPS", help="record gradient norms every STEPS iterations (default: 100 records a run)")

    p = add("responses", "std of each 3x3 layer's responses in plain and residual nets: the 2015 paper's Figure 7")
    p.add_argument("--depths", type=int, nargs="+", metavar="D",
                   help="the depths of the plain and residual nets to train, 6n+2 (default: 20 56 110)")
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="measure these trained runs instead of training new nets")

    for study, (title, variants) in STUDIES.items():  # the 2016 paper's ablations, trained as it trains
        p = add(study, f"{title[0].lower()}{title[1:]}: one net in each variant", recipe="he2016-preact")
        p.add_argument("--depth", type=int, default=110, metavar="D", help="the depth of every variant's net (default 110)")
        p.add_argument("--block", choices=["basic", "bottleneck"], default="basic",
                       help="basic (6n+2 layers) or bottleneck (9n+2; the paper's ResNet-164 is --depth 164 --block bottleneck)")
        p.add_argument("--variants", nargs="+", metavar="KEY",
                       help=f"a subset of {', '.join(v[0] for v in variants)} (default: all)")
        p.add_argument("--seeds", type=int, default=1, metavar="K", help="train each net with K seeds (--seed onwards; default 1)")


def _check_one_source(args: argparse.Namespace) -> None:
    """A command that reads a run or published weights got exactly one of them."""
    if (args.run_dir is None) == (args.pretrained is None):
        raise ValueError("give a run directory or --pretrained MODEL[:TAG], not both or neither")


def cmd_recipes(args: argparse.Namespace) -> None:
    import textwrap

    from .recipes import describe_recipe

    if args.name:
        recipe = RECIPES[args.name]
        print(f"{recipe.name}: {describe_recipe(recipe)}")
        fields = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "notes")}
        width = max(map(len, fields)) + 2
        for key, value in fields.items():
            print(f"  {key:<{width}}{json.dumps(value)}")  # as --recipe-arg KEY=VALUE reads it back
        return
    for name, recipe in RECIPES.items():
        print(f"{name}: {describe_recipe(recipe)}")
        print(textwrap.fill(recipe.notes, width=100, initial_indent="    ", subsequent_indent="    "))
    print("\n`resnetlab recipes NAME` lists every field of one, as --recipe-arg KEY=VALUE changes them.")


def cmd_data(args: argparse.Namespace) -> None:
    import numpy as np

    from .data import load_split, resolve_dataset

    if not args.export and (args.limit_train or args.limit_test):
        raise ValueError("--limit-train and --limit-test go with --export: without it, data describes the whole dataset")
    name = resolve_dataset(args.dataset, args.data_dir)  # imagenet: prepared here, once, before any training
    if args.export:
        if name.startswith("folder:"):
            raise ValueError(f"{args.dataset} is already a folder of images; --export writes the named datasets as one")
        from .data import export_folder

        splits = {"train": load_split(name, "train", args.data_dir, limit=args.limit_train),
                  "val": load_split(name, "test", args.data_dir, limit=args.limit_test)}
        out = export_folder(splits, args.export)
        print(f"wrote {sum(len(ds) for ds in splits.values()):,} images to {out}; train on them with --dataset folder:{out}")
        return
    splits = {split: load_split(name, split, args.data_dir, on_disk=True) for split in ("train", "test")}  # or fail here
    print(f"{args.dataset}: {name}" if args.dataset == "imagenet" else name)
    for split, title in (("train", "train"), ("test", "held out" if name.startswith("folder:") else "test")):
        ds = splits[split]
        in_memory = hasattr(ds, "images")
        form = "x".join(map(str, ds.images.shape[1:])) + " uint8" if in_memory else "image files (resized to --image-size, 64 by default)"
        print(f"  {title:<10}{len(ds):>10,} images  {form}")
    train = splits["train"]
    # Every class counted, those without a training image too.
    labels = np.asarray(train.labels if hasattr(train, "images") else train.samples.labels)
    per_class = np.bincount(labels, minlength=len(train.classes))
    names = ", ".join(train.classes[:8]) + (", ..." if len(train.classes) > 8 else "")
    counts = f"{per_class.min():,}" if per_class.min() == per_class.max() else f"{per_class.min():,} to {per_class.max():,}"
    print(f"  {len(train.classes)} classes, {counts} training images each: {names}")


def _add_view_flags(p: argparse.ArgumentParser) -> None:
    views = p.add_mutually_exclusive_group()
    views.add_argument("--ten-crop", action="store_true",
                       help="average each image's scores over 10 crops (corners, centre, mirrored): the 2015 paper's Table 3")
    views.add_argument("--scales", nargs="*", metavar="SIDE",  # whole numbers, read in main: see _scale_sides
                       help="average scores over whole images resized to these shorter sides and mirrored (default: "
                            "the 2015 paper's 224 256 384 480 640 for 224-pixel inputs, its fully-convolutional testing; "
                            "in proportion for other input sizes)")


def _views(args: argparse.Namespace) -> tuple[str | None, tuple[int, ...] | None]:
    """The test-time views the flags ask for, and the scales (None: the paper's, in proportion to the model's input)."""
    scales = tuple(args.scales) if args.scales else None
    from .data import MAX_SIDE

    if scales and not 1 <= min(scales) <= max(scales) <= MAX_SIDE:
        raise ValueError(f"--scales are image sides from 1 to {MAX_SIDE:,} pixels, not {min(scales) if min(scales) < 1 else max(scales)}")
    return ("ten-crop" if args.ten_crop else "scales" if args.scales is not None else None), scales


def cmd_models(args: argparse.Namespace) -> None:
    import torch

    from .models import _CIFAR_NAME, count_parameters, create_model, describe_model, list_models
    from .pretrained import published_tags

    names = list_models(args.pattern, pretrained=args.pretrained)
    by_depth = not names and not args.pretrained and _CIFAR_NAME.match(args.pattern)
    if by_depth:  # resnet74 and the like: built on the fly, so in no list
        with torch.device("meta"):
            model = create_model(args.pattern)  # or one line saying which depths exist
        print(f"{args.pattern}: {count_parameters(model):,} parameters, a CIFAR net built by depth (not in the list of named models)")
        return
    if not names:
        raise ValueError(f"no model{' with published weights' if args.pretrained else ''} matches {args.pattern!r}")
    tags = {name: ", ".join(published_tags(name)) or "-" for name in names}
    width = max(len("ImageNet weights"), *map(len, tags.values())) + 2
    print(f"{'model':<20}{'parameters':>14}  {'ImageNet weights':<{width}}description")
    for name in names:
        with torch.device("meta"):  # counts need shapes only: no memory, no init time
            model = create_model(name)
        print(f"{name:<20}{count_parameters(model):>14,}  {tags[name]:<{width}}{describe_model(name)}")


def cmd_summary(args: argparse.Namespace) -> None:
    from .runs import CONFIG
    from .model_summary import summary

    if args.input_size and args.input_size[0] not in (1, 3) and args.input_size[-1] in (1, 3):
        c, h, w = args.input_size[-1], *args.input_size[:2]
        raise ValueError(f"--input-size is channels first, as PyTorch holds images: {c} {h} {w}, "
                         f"not {' '.join(map(str, args.input_size))} (Keras's order)")
    if args.input_size and not (Path(args.model) / CONFIG).is_file() and "in_chans" not in dict(args.model_arg):
        # A named net asked for one-channel images is built for them, as --model-arg in_chans=1 would.
        args.model_arg.append(("in_chans", args.input_size[0]))
    model, name, config = _model_or_run(args)
    if args.input_size:
        from .data import MAX_SIDE

        size = tuple(args.input_size)
        if not (size[0] >= 1 and 1 <= min(size[1:]) <= max(size[1:]) <= MAX_SIDE):
            raise ValueError(f"--input-size is channels, height and width, each at least 1 and the sides at most "
                             f"{MAX_SIDE:,} pixels, not {' '.join(map(str, size))}")
    else:
        size = _input_size(model, config)
    summary(model, size, title=name)


def _input_size(model, config: dict | None) -> tuple[int, int, int]:
    """The (C, H, W) a run trained on, else the one its kind of net is made for: CIFAR's 32, the notebook's 64, ImageNet's 224."""
    if config is not None:
        return config["channels"], config["image_size"], config["image_size"]
    side = {"keras": 64, "cifar": 32}.get(model.stem, 224)
    return model.conv1.in_channels, side, side


def _model_or_run(args: argparse.Namespace):
    """The model ``args.model`` names, or a run directory's (with its config; None for a name), and a title."""
    from .models import create_model
    from .runs import CONFIG, build_model, read_config

    if Path(args.model).is_dir() and not (Path(args.model) / CONFIG).is_file():
        raise ValueError(f"{args.model} is a folder but not a run directory (no {CONFIG}); give a run directory or a model name")
    if os.sep in args.model and not Path(args.model).exists():  # a path, not a name
        raise ValueError(f"{args.model} is not a run directory (it does not exist); give a run directory or a model name")
    if (Path(args.model) / CONFIG).is_file():
        if args.num_classes is not None or args.model_arg:  # --num-classes 0 too
            raise ValueError(f"{args.model} is a run directory: its config.json says how its model is built")
        config = read_config(args.model)
        # The run's folder name: a title for a figure that may be shared, which a local path is not.
        return build_model(config), f"{config['model']} ({Path(args.model).resolve().name})", config
    return create_model(args.model, **{"num_classes": args.num_classes, **dict(args.model_arg)}), args.model, None


def cmd_train(args: argparse.Namespace) -> None:
    from . import distributed
    from .train import TrainConfig, resume, train

    # A bar redrawn with carriage returns is noise in a log file: bars only where someone watches.
    progress = not args.no_progress and sys.stderr.isatty()
    world = distributed.world_from_env()
    if args.resume:
        may_change = ("--resume", "--device", "--workers", "--no-progress", "--data-dir")
        ignored = [flag for flag in _options_given(args.argv, "train") if flag not in may_change]
        if ignored:
            flags = ", ".join(ignored)
            raise ValueError(f"--resume continues the run as it was configured; drop {flags} (only --device, --workers "
                             "and --data-dir, where the same data now lives, may change)")
        result = resume(args.resume, device=args.device, progress=progress, workers=args.workers,
                        data_dir=args.data_dir)
    else:
        config = TrainConfig(
            model=args.model, dataset=args.dataset, data_dir=args.data_dir, recipe=args.recipe,
            epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            weight_decay=args.weight_decay, limit_train=args.limit_train, limit_test=args.limit_test,
            image_size=args.image_size, device=args.device, seed=args.seed, data_seed=args.data_seed, out=args.out,
            compile=args.compile, cuda_graph=not args.no_cuda_graph, deterministic=args.deterministic,
            eval_every=args.eval_every, progress=progress, weights=args.weights,
            model_kwargs=dict(args.model_arg), recipe_overrides=dict(args.recipe_arg), workers=args.workers,
        )
        if world.is_main:  # what it trains with, chosen by the model where no --recipe says
            from .recipes import describe_recipe
            from .train import resolve_recipe

            recipe = resolve_recipe(config)
            print(f"{config.model}, recipe {recipe.name}: {describe_recipe(recipe)}")
            if config.dataset == "signs" and "--model" not in _options_given(args.argv, "train"):
                print("note: resnet20 is train's default model; the notebook's net for SIGNS is --model signs_resnet50 "
                      "(with its recipe, signs-adam)")
        result = train(config)
    distributed.teardown(world)
    if not world.is_main:
        return
    acc = result.test_accuracy
    if result.test is None and acc is not None:  # resumed, and found finished: its last evaluation is history
        print(f"the run had already finished ({result.steps} steps): test accuracy {acc:.2%}; "
              f"resnetlab eval {result.run_dir} evaluates it again")
    elif acc is not None:
        print(f"test accuracy {acc:.2%}  test error {1 - acc:.2%}  ({result.steps} step{'s' if result.steps != 1 else ''}, "
              f"{result.seconds:.0f} s)")
    print(f"run directory: {result.run_dir}")


def _options_given(argv: list[str], command: str) -> list[str]:
    """The options of ``command`` that ``argv`` gives, by their full names. Asked of argparse itself, with
    no defaults, so that a default written out (--model resnet20) and an abbreviation (--datas for
    --dataset) count as given, as they would not by comparing values or spellings."""
    parser = build_parser()
    own = _own_parser(parser, command)
    for action in own._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_known_args([a for a in argv if a != "--debug"])[0])  # a parser made for this alone
    return [max(action.option_strings, key=len) for action in own._actions if action.option_strings and action.dest in given]


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_published, evaluate_run

    _check_one_source(args)
    views, scales = _views(args)
    if args.pretrained:
        if not args.dataset:
            raise ValueError("--pretrained needs --dataset imagenet, or folder:PATH of the 1000 ImageNet classes")
        if args.split != "test":
            raise ValueError("--split train scores a run's training images; published weights are scored on the folder given")
        report = evaluate_published(args.pretrained, args.dataset, data_dir=args.data_dir, limit_test=args.limit_test,
                                    device=args.device, views=views, scales=scales, out=args.out)
    else:
        report = evaluate_run(args.run_dir, dataset=args.dataset, data_dir=args.data_dir, limit_test=args.limit_test,
                              device=args.device, views=views, scales=scales, out=args.out, split=args.split)
    print(report.text())


def cmd_predict(args: argparse.Namespace) -> None:
    from .data import DataError
    from .devices import pick_device
    from .predict import iter_predictions
    from .pretrained import load_published
    from .runs import load_model

    top_k = args.top_k if args.top_k is not None else (5 if args.pretrained else 3)
    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    device = pick_device(args.device)
    if args.pretrained:
        inputs = args.inputs
    else:
        run_dir, *inputs = args.inputs
        if not inputs:
            what = f" ({run_dir} is a file, not a run directory)" if Path(run_dir).is_file() else ""
            raise ValueError(f"no images given{what}: resnetlab predict RUN_DIR IMAGE... (or --pretrained MODEL IMAGE...)")
        from .runs import read_config

        read_config(run_dir)  # a mistyped run is the first thing to name, not the images after it
    images = _image_paths(inputs)  # before the model loads (or downloads), so a wrong path fails at once
    if args.csv is not None:
        from .data import IMAGE_EXTENSIONS

        # `--csv *.png`: the shell hands the first image to --csv, which would be written over.
        target = Path(args.csv).resolve()
        if target.suffix.lower() in IMAGE_EXTENSIONS or target in {Path(p).resolve() for p in images}:
            raise ValueError(f"--csv {args.csv} names an image file, which the CSV would overwrite; "
                             "give a .csv file name after --csv")
    model, config = load_published(args.pretrained, device) if args.pretrained else load_model(run_dir, device)
    top_k = min(top_k, len(config["classes"]))
    views, scales = _views(args)
    # A folder of photos may hold a damaged one: every other image is still answered, and the run fails at the end.
    unreadable = []

    def passed_over(error: DataError) -> None:
        if len(images) > 1:  # one image alone: its error is the command's
            print(f"error: {error}", file=sys.stderr, flush=True)
        unreadable.append(error)

    answers = iter_predictions(model, config, images, top_k, device, views=views, scales=scales, workers=args.workers,
                               on_unreadable=passed_over)
    if args.csv is None:
        for pred in answers:
            # A file name that is not UTF-8 is shown with a stand-in for its odd bytes: a UTF-8 terminal refuses them.
            print(f"{os.fsencode(pred.path).decode(errors='replace')}: {pred.ranked()}")
    else:
        csv_existed = Path(args.csv).exists()
        count = _write_csv(args.csv, answers, top_k)
        if count:  # beside the CSV's rows when they go to standard output (--csv -), where a pipe reads them
            print(f"{count} image{'s' if count != 1 else ''} classified: {args.csv}",
                  file=sys.stderr if args.csv == "-" else sys.stdout)
    if len(images) == 1 and unreadable:
        raise unreadable[0]
    if unreadable:
        rest = len(images) - len(unreadable)
        outcome = (f"the other {rest} {'were' if rest != 1 else 'was'} classified" if rest else
                   f"{args.csv} was left as it was" if args.csv and csv_existed else "none was classified")
        raise DataError(f"{len(unreadable)} of the {len(images)} images could not be classified (each named above); "
                        f"{outcome}")


def _image_paths(inputs: list[str]) -> list[str]:
    """The image files given, with every folder among them replaced by the images under it."""
    from .data import DataError, image_files
    from .runs import CONFIG

    paths = []
    for given in inputs:
        if (Path(given) / CONFIG).is_file():  # its curves and confusion matrix would be classified as photos
            raise DataError(f"{given} is a run directory, not a folder of images: predict takes one run, first "
                            "(resnetlab predict RUN_DIR IMAGE...), or none with --pretrained")
        if Path(given).is_dir():
            found = image_files(given)
            if not found:
                raise DataError(f"{given} holds no image files")
            paths += found
        elif Path(given).is_file():
            paths.append(given)
        else:
            raise DataError(f"{given} does not exist or is not a file")
    return paths


def _write_csv(path: str, answers: Iterable, top_k: int) -> int:
    """Write ``answers`` (predict's, as they come) to ``path`` (``-``: standard output), a row an image,
    and return how many.

    Through a temporary file: Ctrl-C or a crash leaves the old CSV, never half a new one over it, and
    with no answer at all (every image unreadable) a file already there stays as it was.
    """
    import csv

    from .runs import atomic_write

    class NoAnswers(Exception):
        pass

    count = 0

    def rows(f) -> None:
        nonlocal count
        writer = csv.writer(f)
        writer.writerow(["path"] + [f"{what}_{rank}" for rank in range(1, top_k + 1) for what in ("class", "probability")])
        for count, pred in enumerate(answers, 1):
            writer.writerow([pred.path] + [v for c, p in zip(pred.classes, pred.probabilities) for v in (c, f"{p:.6f}")])

    def write(tmp: str) -> None:
        # A file name that is not UTF-8 goes back out as the bytes it came in as.
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows(f)
        if count == 0:
            raise NoAnswers

    if path == "-":  # a row as each image is answered, for the program reading the pipe
        rows(sys.stdout)
        sys.stdout.flush()
        return count
    try:
        atomic_write(Path(path), write)
    except NoAnswers:
        pass
    return count


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    _check_one_source(args)
    views, scales = _views(args)
    serve(args.run_dir, args.host, args.port, args.top_k, args.device, pretrained=args.pretrained, views=views,
          scales=scales)


def cmd_import(args: argparse.Namespace) -> None:
    from .keras_weights import import_keras

    out = Path(args.out) if args.out else Path("runs") / Path(args.file).stem
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    run_dir, keras = import_keras(args.file, out, args.dataset, classes, args.image_size, args.data_dir)
    side = args.image_size or 224
    size = (f"{keras.image_size}x{keras.image_size} images" if keras.image_size
            else f"images of any size (predict and serve resize them to {side}; --image-size sets it)")
    options = f" {keras.model_kwargs}" if keras.model_kwargs else ""
    print(f"{args.file} (Keras {keras.keras_version}): {keras.model}{options}, {size}, {keras.fed}")
    if keras.batch_stats and keras.keras_version.startswith("2"):  # Keras 3 lets predict() override the flag
        print(f"note: {len(keras.batch_stats)} of its batch norms were called with training=True (as the notebook's "
              "blocks are), so Keras normalises them with each batch's own statistics even in predict() and "
              "evaluate(); resnetlab uses the moving averages stored in the file, as Keras does with training=False")
    print(f"run directory: {run_dir}  (resnetlab eval {run_dir}; resnetlab predict {run_dir} IMAGE...)")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_onnx, load_for_export

    _check_one_source(args)
    keras_name = Path(args.out or "").suffix.lower() in (".keras", ".h5")
    if args.format == "onnx" and keras_name:
        raise ValueError(f"{args.out} names a Keras file: drop --format onnx, or give -o FILE.onnx")
    if args.format == "keras" or keras_name:
        from .keras_export import export_keras

        onnx_only = [flag for flag, given in (("--no-check", args.no_check), ("--opset", args.opset is not None)) if given]
        if onnx_only:
            raise ValueError(f"{' and '.join(onnx_only)} {'are' if len(onnx_only) > 1 else 'is'} for ONNX files; "
                             "a Keras export has no opset and no check")

        model, config, path = load_for_export(args.run_dir, args.pretrained, args.out, ".keras")
        export_keras(model, config, path)
        side, channels = config["image_size"], config["channels"]
        print(f"wrote {path} (Keras: input (batch, {side}, {side}, {channels}) float32 scaled to 0-1, softmax over "
              f"{len(config['classes'])} classes; keras.models.load_model reads it)")
        # load_weights copies weights alone: a model of one's own has no Normalization layer for the statistics.
        mean, std = (", ".join(f"{v:.4g}" for v in config[k]) for k in ("mean", "std"))
        print(f"its first layer normalises with mean ({mean}) and std ({std}), kept in the model's configuration: "
              "a model of your own given these weights by load_weights must be fed (x - mean) / std")
        return
    print(export_onnx(args.run_dir, args.out, check=not args.no_check, pretrained=args.pretrained, opset=args.opset).text())


def cmd_diagram(args: argparse.Namespace) -> None:
    from .diagram import draw_model

    model, name, config = _model_or_run(args)
    out = args.out or (Path(args.model) / "model.svg" if config is not None else f"{args.model}.svg")
    print(draw_model(model, out, collapse=not args.expand, title=name, image_size=_input_size(model, config)[1:]))


def cmd_plot(args: argparse.Namespace) -> None:
    from .plots import plot_confusion, plot_runs

    dirs = [Path(d) for d in args.run_dirs]
    out = args.out or (dirs[0] / "curves" if len(dirs) == 1 else Path("curves"))
    if Path(out).is_dir():  # `-o figures/` means into the folder, not figures.png beside it
        out = Path(out) / "curves"
    paths = plot_runs(dirs, out, x=args.x)
    for d in dirs if args.out is None else []:  # evaluated runs get their confusion matrix redrawn too
        if (d / "eval.json").exists():
            ev = json.loads((d / "eval.json").read_text())
            paths += plot_confusion(ev["confusion_matrix"], ev["classes"], d / "confusion", f"{d.name} on {ev['dataset']}")
    for path in paths:
        print(path)


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench_decode, bench_model, bench_train, check_results_dir, save_result

    check_results_dir(args.results)  # not after minutes of timing
    if args.bench == "train":
        result = bench_train(args.model, args.dataset, args.data_dir, args.batch_size, args.steps, args.device,
                             args.recipe, args.workers, args.limit_test, compile=args.compile,
                             repeat=args.repeat)
    elif args.bench == "decode":
        result = bench_decode(args.folder, args.size, args.count, args.repeat)
    else:
        result = bench_model(args.model, args.batch_size, args.image_size, args.steps, args.device, args.compile)
    path = save_result(result, args.results)
    print(f"result written to {path}", file=sys.stderr)  # stdout's last line stays the ratio


def cmd_reproduce(args: argparse.Namespace) -> None:
    from . import experiments
    from .train import TrainConfig

    base = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, recipe=args.recipe, epochs=args.epochs, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, limit_train=args.limit_train, limit_test=args.limit_test,
        device=args.device, seed=args.seed, data_seed=args.data_seed, progress=sys.stderr.isatty(),
        recipe_overrides=dict(args.recipe_arg),
    )
    if args.experiment == "degradation":
        paths = experiments.reproduce_degradation(base, args.out, args.depths, args.seeds)
    elif args.experiment == "depth":
        paths = experiments.reproduce_depth(base, args.out, args.depths, args.seeds)
    elif args.experiment == "gradients":
        paths = experiments.reproduce_gradients(base, args.out, args.depth, args.every)
    elif args.experiment == "responses":
        paths = experiments.reproduce_responses(base, args.out, args.depths, args.runs)
    else:  # one of ablations.STUDIES
        paths = experiments.reproduce_variants(base, args.out, args.experiment, args.depth, args.block, args.variants,
                                               args.seeds)
    print("\nWhere the files are:")
    for path in paths:
        print(f"  {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(args.out), device=args.device, data_dir=args.data_dir)


COMMANDS = {
    "models": cmd_models,
    "recipes": cmd_recipes,
    "data": cmd_data,
    "summary": cmd_summary,
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "import": cmd_import,
    "serve": cmd_serve,
    "diagram": cmd_diagram,
    "plot": cmd_plot,
    "bench": cmd_bench,
    "reproduce": cmd_reproduce,
    "demo": cmd_demo,
}


def _own_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of ``command``, whose ``error`` shows that command's usage."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices.get(command, parser)


def _scale_sides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--scales`` as whole numbers. Taken as text, so that on ``predict`` what follows the sides are the
    images (``predict RUN --scales a.jpg``), as they are after any other flag; an int type would refuse them."""
    if not getattr(args, "scales", None):
        return
    sides = list(itertools.takewhile(lambda v: v.isascii() and v.isdigit(), args.scales))
    rest = args.scales[len(sides):]
    if rest and args.command == "predict" and not (_is_number(rest[0]) and not Path(rest[0]).exists()):
        args.inputs += rest
    elif rest:
        _own_parser(parser, args.command).error(f"argument --scales: expected image sides in pixels, got {rest[0]!r}")
    args.scales = [int(v) for v in sides]


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a number (-5, 2.5, nan): a side mistyped, not an image's name."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unknown_arguments(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """Exit with the command's own usage and the nearest of its options to a mistyped one (--topk: --top-k)."""
    import difflib

    own = _own_parser(parser, command)
    flags = [f for action in own._actions for f in action.option_strings]
    typed = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
    near = difflib.get_close_matches(typed, flags, n=1) if typed else []
    own.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {near[0]}?)" if near else ""))


# Arguments that name files or folders. The shell expands a leading ~ only where a word starts with it,
# so --out=~/run or a quoted "~/photos" arrives as it was typed.
_PATH_ARGUMENTS = ("out", "resume", "csv", "data_dir", "results", "weights", "run_dir", "run_dirs", "runs", "inputs", "file",
                   "model", "export", "folder")


def _expand_home(args: argparse.Namespace) -> None:
    for name in _PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def _import_modules(names: list[str]) -> None:
    """Import the ``--import`` modules, from the current folder too, as ``python -m`` would find them."""
    import importlib

    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"--import {name}: {e}") from None


def _say_stopped(e: KeyboardInterrupt, command: str) -> None:
    """Tell how a stopped command goes on: a run's resume command, said once under torchrun."""
    trainer = sys.modules.get("resnetlab.train")  # a run stopped only if the trainer was loaded
    if trainer is None or not isinstance(e, trainer.Interrupted):
        print("interrupted", file=sys.stderr)
        return
    from .distributed import world_from_env

    if not world_from_env().is_main:  # one of several torchrun processes: process 0 says it
        return
    if command == "reproduce":  # its runs resume when the experiment is run again
        print(f"stopped at step {e.step} of {e.run_dir}; the same command again continues the experiment", file=sys.stderr)
    else:
        print(str(e), file=sys.stderr)


# What needs less memory, by command: the allocator's own message names no flag.
_SMALLER = {"train": "a smaller --batch-size (or --image-size)", "reproduce": "a smaller --batch-size",
            "bench": "a smaller --batch-size (or --image-size)", "summary": "a smaller --input-size (or --num-classes)"}


def _out_of_memory(e: Exception, command: str) -> str | None:
    """The allocator's failure said plainly with what to change, or None if ``e`` is no such failure."""
    text = str(e)
    if not isinstance(e, RuntimeError) or not ("out of memory" in text or "can't allocate memory" in text):
        return None
    cpu = re.search(r"tried to allocate (\d+) bytes", text)
    if cpu:
        wanted = int(cpu.group(1))
        what = f"out of memory (tried to allocate {wanted / 1e9:,.1f} GB)" if wanted >= 1e9 else \
            f"out of memory (tried to allocate {wanted / 1e6:,.0f} MB)"
    else:  # CUDA's, MPS's: their first sentences say how much was wanted and free; the rest is allocator tuning
        first = text.strip().splitlines()[0]
        what = ". ".join(t for t in first.split(". ")[:3] if "PYTORCH_" not in t).rstrip(".")
    return f"{what}: {_SMALLER.get(command, 'a smaller model or input')} needs less"


def main(argv: list[str] | None = None) -> int:
    """Run ``resnetlab ARGV`` (default ``sys.argv[1:]``) and return its exit status: 0, 2 for an error, and
    128 + the signal's number if stopped, as a shell counts it (130 for Ctrl-C, 143 for SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    parser = build_parser()
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.inputs += extra  # images after an option (predict RUN --ten-crop a.jpg b.jpg): argparse stops at it
    elif extra:
        _unknown_arguments(parser, args.command, extra)
    _scale_sides(parser, args)
    args.debug, args.argv = debug, argv
    _expand_home(args)
    try:
        _import_modules(args.imports)
        COMMANDS[args.command](args)
    except KeyboardInterrupt as e:  # Ctrl-C, or a run that stopped on it (train.Interrupted: saved, resumable)
        _say_stopped(e, args.command)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    except BrokenPipeError:  # `resnetlab models | head`: the reader has gone, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush stays quiet
        return 1
    except Exception as e:  # every failure reaches the user as one line; --debug shows the rest
        if args.debug:
            raise
        message = _out_of_memory(e, args.command) or str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename is not None and e.strerror:
            # Python's "[Errno 13] Permission denied: 'x'" said plainly, with the path first.
            where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else e.filename
            message = f"{where}: {e.strerror[0].lower()}{e.strerror[1:]}"
            path = Path(os.fsdecode(e.filename))
            if e.errno in (errno.EEXIST, errno.ENOTDIR) and any(p.is_file() for p in (path, *path.parents)):
                message += " (a file is where a folder is needed)"
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``resnetlab`` program (and ``python -m resnetlab``): ``main()`` with its status as the exit code."""
    status = main()
    # What is left is the interpreter's tear-down (worker processes, torch's finalizers): a Ctrl-C there,
    # often the second of an impatient user, ends the process at once rather than printing a traceback.
    # (Unless Ctrl-C was ignored from the start, as in a background job: it stays ignored.)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(status)


if __name__ == "__main__":
    run()
