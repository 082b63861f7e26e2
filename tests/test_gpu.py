"""The CUDA paths: the graphed step against the eager one, no host syncs inside a step, GPU runs that resume.

Skipped without a CUDA GPU; benchmarks/gpu.sh runs them first on a GPU machine.
"""

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import fashion_mnist_here, noise_photos

from resnetlab import runs
from resnetlab.loader import DeviceLoader
from resnetlab.models import create_model
from resnetlab.recipes import get_recipe
from resnetlab.steps import GraphedTrainStep, build_train_step
from resnetlab.train import Interrupted, TrainConfig, resume, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@contextmanager
def no_host_sync():
    """Raise on any operation that makes the host wait for the GPU."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def fake_loader(n: int = 1024, batch_size: int = 64, scale: bool = False) -> DeviceLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    crop = {"scale_crop": (0.25, 1.0)} if scale else {"pad_crop": 2}
    return DeviceLoader(images, labels, batch_size, [0.3], [0.3], CUDA, train=True, flip=True, channels_last=True, **crop)


def two_steps(compile: bool = False, **options):
    """An eager and a graphed step on identical copies of resnet8 (with model ``options``)."""
    torch.manual_seed(0)
    recipe = get_recipe("fast")
    loader = fake_loader()
    model_a = create_model("resnet8", in_chans=1, **options).to(CUDA).to(memory_format=torch.channels_last)
    model_b = copy.deepcopy(model_a)
    eager = build_train_step(model_a, recipe, CUDA, graphed=False)
    graphed = build_train_step(model_b, recipe, CUDA, graphed=True, sample=next(iter(loader)), compile=compile)
    return loader, (model_a, eager), (model_b, graphed)


@pytest.mark.parametrize(
    "compile, options",
    [(False, {}), (True, {}), (False, {"order": "bn_after_add", "mixing": "gate"}),
     (False, {"order": "relu_preact", "mixing": "shortcut_gate"}), (False, {"order": "preact", "shortcut": "C"})],
    ids=["graph", "compile+graph", "bn-after-add+gate", "relu-preact+shortcut-gate", "preact+conv-shortcut"],
)
def test_graphed_step_follows_the_eager_step(compile, options):
    loader, (model_a, eager), (model_b, graphed) = two_steps(compile, **options)
    start = copy.deepcopy(model_a)
    assert isinstance(graphed, GraphedTrainStep) and graphed.graph is not None
    for i, (x, y) in enumerate(loader.epoch(0)):
        lr = 0.005 * (i + 1)  # small steps: bf16 rounding differences stay small too
        eager(x, y, lr)
        graphed(x, y, lr)
    sums_a, sums_b = eager.read_sums(), graphed.read_sums()
    assert sums_a["seen"] == sums_b["seen"] == 1024  # warm-up and capture steps were not counted
    # bf16 kernels chosen separately for each path: equal up to rounding, not bit for bit.
    assert sums_b["loss"] == pytest.approx(sums_a["loss"], rel=2e-2)
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(p, q, atol=2e-2, rtol=5e-2), name
    # Most weights move less than that tolerance in 16 small steps, so each tensor's update is compared too: on
    # the CPU, fp32 against bf16 autocast gives cosines of 0.91 or more and norms within 12%; an update lost
    # every other step, a norm ratio near 0.5.
    for (name, p0), p, q in zip(start.named_parameters(), model_a.parameters(), model_b.parameters(), strict=True):
        moved_a, moved_b = (p - p0).flatten().float(), (q - p0).flatten().float()
        assert torch.nn.functional.cosine_similarity(moved_a, moved_b, dim=0) > 0.8, name
        assert moved_b.norm() / moved_a.norm() == pytest.approx(1, abs=0.25), name
    bn_a, bn_b = (next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).num_batches_tracked
                  for model in (model_a, model_b))
    assert int(bn_a) == int(bn_b) == len(loader)  # the warm-up steps were undone
    for (name, a), b in zip(model_a.named_buffers(), model_b.buffers()):  # BN statistics, updated in place by the graph
        assert torch.allclose(a.float(), b.float(), atol=2e-2, rtol=5e-2), name


@pytest.mark.parametrize("options", [{"mixing": "dropout"}, {"drop_path_rate": 0.5}, {"drop_rate": 0.5}],
                         ids=["shortcut-dropout", "stochastic-depth", "head-dropout"])
def test_dropout_draws_new_masks_on_every_replay(options):
    """Random numbers inside the graph come from the device's default generator, which a CUDA graph
    advances on every replay. At learning rate 0 the weights stay put and BN normalises with the
    batch's own statistics, so only fresh masks can change the loss of the same batch."""
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1, **options).to(CUDA).to(memory_format=torch.channels_last)
    x, y = next(iter(fake_loader()))
    step = build_train_step(model, get_recipe("fast"), CUDA, graphed=True, sample=(x, y))
    losses = []
    for _ in range(2):
        step(x, y, 0.0)
        losses.append(step.read_sums()["loss"])
        step.reset_sums()
    assert losses[0] != losses[1]


def test_capture_leaves_the_weights_as_they_were():
    torch.manual_seed(0)
    model = create_model("resnet8", in_chans=1).to(CUDA).to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_train_step(model, get_recipe("fast"), CUDA, graphed=True, sample=next(iter(fake_loader())))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("graphed,scale", [(False, False), (True, False), (True, True)],
                         ids=["eager", "graph", "graph+scale-crop"])
def test_steps_never_wait_for_the_gpu(graphed, scale):
    """Batches and steps queue up on the GPU: no host sync between one step and the next."""
    torch.manual_seed(0)
    loader = fake_loader(scale=scale)
    model = create_model("resnet8", in_chans=1).to(CUDA).to(memory_format=torch.channels_last)
    batches = loader.epoch(0)
    first = next(batches)  # the epoch's plan is copied to the device here, once
    step = build_train_step(model, get_recipe("fast"), CUDA, graphed=graphed, sample=first)
    step(*first, 0.1)
    with no_host_sync():
        for x, y in batches:
            step(x, y, 0.1)


@pytest.mark.parametrize("crop", [{"pad_crop": 4}, {"scale_crop": (0.08, 1.0)}], ids=["pad-crop", "scale-crop"])
def test_batches_on_the_gpu_equal_those_on_the_cpu(crop):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (300, 3, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (300,), generator=g)
    kw = dict(batch_size=50, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2], train=True, flip=True, seed=7, **crop)
    cpu = DeviceLoader(images, labels, device="cpu", **kw)
    gpu = DeviceLoader(images, labels, device=CUDA, **kw)
    for (xa, ya), (xb, yb) in zip(cpu.epoch(3, start_batch=2), gpu.epoch(3, start_batch=2), strict=True):
        assert torch.equal(ya, yb.cpu())
        # Gathered pixels are exact; bilinear sampling may round differently on the GPU.
        assert torch.allclose(xa, xb.cpu(), atol=1e-6 if "pad_crop" in crop else 1e-3)


@pytest.mark.parametrize("crop", [{"scale_crop": (0.08, 1.0)}, {"scale_jitter": (20, 30)}], ids=["scale-crop", "jitter"])
def test_folder_crops_and_colour_noise_on_the_gpu_equal_those_on_the_cpu(tmp_path, crop):
    """Crops cut from files by workers, pinned and copied to the GPU, then coloured there, as on the CPU."""
    from resnetlab.data import get_dataset
    from resnetlab.loader import make_loader

    noise_photos(tmp_path, ("a", "b"), 12, lambda i: (24 + 2 * i, 36))
    g = torch.Generator().manual_seed(2)
    folder = get_dataset(f"folder:{tmp_path}", "train", image_size=16, val_fraction=0.0)
    pca = {"eigval": [0.05, 0.01, 0.001], "eigvec": torch.linalg.qr(torch.randn(3, 3, generator=g))[0].tolist()}
    kw = dict(train=True, flip=True, seed=4, lighting=0.1, colour_pca=pca, workers=2, channels_last=True, **crop)
    cpu = make_loader(folder, 8, [0.5] * 3, [0.25] * 3, torch.device("cpu"), **kw)
    gpu = make_loader(folder, 8, [0.5] * 3, [0.25] * 3, CUDA, **kw)
    for (xa, ya), (xb, yb) in zip(cpu.epoch(1), gpu.epoch(1), strict=True):
        assert torch.equal(ya, yb.cpu())
        assert torch.allclose(xa, xb.cpu(), atol=1e-5)


@pytest.mark.skipif(not fashion_mnist_here(), reason="no Fashion-MNIST files (Debian's package or $RESNETLAB_DATA)")
def test_graphed_gpu_run_learns_and_resumes_on_the_cpu(tmp_path):
    config = TrainConfig(model="resnet8", limit_train=4096, limit_test=1000, batch_size=128, epochs=2,
                         device="cuda", out=str(tmp_path / "run"), progress=False)
    with pytest.raises(Interrupted):
        train(config, stop_at=40)  # mid-epoch: 32 steps an epoch
    assert runs.read_config(tmp_path / "run")["cuda_graph"] is True
    result = resume(tmp_path / "run", device="cpu", progress=False)  # a graphed checkpoint, continued eagerly
    assert result.steps == 64
    assert result.test_accuracy > 0.6


@pytest.mark.skipif(not fashion_mnist_here(), reason="no Fashion-MNIST files (Debian's package or $RESNETLAB_DATA)")
def test_a_compiled_graphed_run_evaluates_the_weights_it_trained(tmp_path):
    """What gpu.sh's -compile stages run: compiled kernels inside the step's graph, evaluated through the
    compiled model in eval mode (a recompilation, and another for the short last test batch) between
    epochs, the graph then training on. The eager evaluation of the saved weights must agree."""
    from resnetlab.evaluate import evaluate_run

    config = TrainConfig(model="resnet8", limit_train=2048, limit_test=300, batch_size=64, epochs=2, compile=True,
                         device="cuda", out=str(tmp_path / "run"), progress=False)
    result = train(config)
    assert [row["test_acc"] is not None for row in result.history] == [True, True]
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    eager = evaluate_run(result.run_dir, limit_test=300, device="cuda", out=tmp_path / "eval").result
    assert result.test.accuracy == pytest.approx(eager.accuracy, abs=0.02)  # bf16 kernels differ, a few answers may too



@pytest.mark.skipif(not fashion_mnist_here(), reason="no Fashion-MNIST files (Debian's package or $RESNETLAB_DATA)")
def test_precise_bn_after_a_graphed_run_gives_the_statistics_of_the_trained_weights(tmp_path):
    """The graph replays the step with the batch norms' buffers it captured; precise BN refills those same
    buffers with eager forwards afterwards. The saved statistics must be the recomputed ones: evaluated on
    the CPU, the saved weights agree with the run's own evaluation."""
    from resnetlab.evaluate import evaluate_run

    config = TrainConfig(model="resnet8", limit_train=2048, limit_test=300, batch_size=64, steps=16, device="cuda",
                         out=str(tmp_path / "run"), progress=False, model_kwargs={"bn_momentum": 0.01},
                         recipe_overrides={"precise_bn": 32})
    result = train(config)
    saved = runs.load_model(result.run_dir)[0]
    assert saved.bn1.running_var.min() < 0.9 or saved.bn1.running_var.max() > 1.1  # not 16 steps at 0.01 from 1
    cpu = evaluate_run(result.run_dir, limit_test=300, device="cpu", out=tmp_path / "eval").result
    assert result.test.accuracy == pytest.approx(cpu.accuracy, abs=0.02)

@pytest.mark.parametrize("recipe, optimizer", [("fast", "sgd"), ("signs-adam", "adam"), ("signs-adam", "adamw")])
def test_a_cpu_checkpoint_continues_in_a_cuda_graph(recipe, optimizer):
    """Optimizer state saved by an eager CPU run (float lr, unfused, step counts on the CPU) is captured fine."""
    torch.manual_seed(0)
    r = get_recipe(recipe, optimizer=optimizer)
    cpu_model = create_model("resnet8", in_chans=1)
    cpu_step = build_train_step(cpu_model, r, torch.device("cpu"))
    for _ in range(2):
        cpu_step(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,)), 1e-3)
    loader = fake_loader()
    model = copy.deepcopy(cpu_model).to(CUDA).to(memory_format=torch.channels_last)
    step = build_train_step(model, r, CUDA, graphed=True, sample=next(iter(loader)),
                            optimizer_state=cpu_step.optimizer.state_dict())
    for x, y in loader.epoch(0):
        step(x, y, 1e-3)
    assert step.read_sums()["seen"] == 1024
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_predictions_on_the_gpu_equal_those_on_the_cpu(tmp_path):
    """A folder predicted on CUDA (autocast, workers decoding) answers as on the CPU, within bf16's reach.

    The images differ in colour and shading and the classifier's weights are scaled up, so that each image
    gets its own answer: on the CPU, another image's answer or the image upside down is 0.08 to 0.57 off,
    bf16 autocast 0.002.
    """
    from PIL import Image

    from resnetlab.data import image_files
    from resnetlab.predict import iter_predictions

    g = torch.Generator().manual_seed(0)
    for c in ["a", "b"]:
        (tmp_path / c).mkdir()
        for i in range(40):
            colour = torch.randint(0, 256, (3,), generator=g)
            shading = torch.linspace(0.2, 1.0, 48 + i).view(-1, 1, 1)  # dark at the top
            noise = torch.randint(-40, 41, (48 + i, 64, 3), generator=g)
            pixels = (colour * shading + noise).clamp(0, 255).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / c / f"{i}.png")
    paths = image_files(tmp_path)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4).eval()
    with torch.no_grad():
        model.fc.weight.mul_(8)
    config = {"channels": 3, "image_size": 32, "resize_size": None, "mean": [0.5] * 3, "std": [0.25] * 3,
              "classes": ["w", "x", "y", "z"]}
    cpu = list(iter_predictions(model, config, paths, 4, "cpu", workers=0))
    gpu = list(iter_predictions(model, config, paths, 4, CUDA, workers=2))
    assert [p.path for p in gpu] == [p.path for p in cpu]
    for a, b in zip(gpu, cpu):
        answer, expected = dict(zip(a.classes, a.probabilities)), dict(zip(b.classes, b.probabilities))
        assert answer == pytest.approx(expected, abs=2e-2), a.path


def test_predict_runs_where_the_model_is_and_moves_it_only_to_a_device_asked_for(trained_run, tmp_path):
    from PIL import Image

    from resnetlab.predict import predict_images
    from resnetlab.runs import load_model

    png = tmp_path / "shoe.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)).save(png)
    model, config = load_model(trained_run)
    [on_cpu] = predict_images(model, config, [png])
    model.cuda()
    [on_gpu] = predict_images(model, config, [png])
    assert next(model.parameters()).is_cuda  # not taken to the CPU behind the caller's back
    # bf16 autocast on the GPU: the same answer, to bf16's precision
    assert on_gpu.classes[0] == on_cpu.classes[0]
    assert on_gpu.probabilities == pytest.approx(on_cpu.probabilities, abs=2e-2)
    predict_images(model, config, [png], device="cpu")
    assert not next(model.parameters()).is_cuda  # as documented: an explicit device takes the model there
