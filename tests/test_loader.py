"""Device-side batches: augmentation properties, normalisation, determinism."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import noise_photos

from resnetlab.loader import DeviceLoader, channel_stats, colour_pca, crop_and_flip, normalize, random_boxes, resized_crop


def images(n=10, c=1, size=6):
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_crop_at_the_pad_offset_without_flip_is_the_original():
    x = images()
    padded = F.pad(x, (2,) * 4)
    n = len(x)
    out = crop_and_flip(padded, torch.full((n,), 2), torch.full((n,), 2), torch.zeros(n, dtype=torch.bool), 6)
    assert torch.equal(out, x)


def test_flip_mirrors_columns_and_crop_shifts():
    x = images()
    padded = F.pad(x, (2,) * 4)
    n = len(x)
    flipped = crop_and_flip(padded, torch.full((n,), 2), torch.full((n,), 2), torch.ones(n, dtype=torch.bool), 6)
    assert torch.equal(flipped, x.flip(-1))
    shifted = crop_and_flip(padded, torch.zeros(n, dtype=torch.long), torch.full((n,), 4), torch.zeros(n, dtype=torch.bool), 6)
    # Offset (0, 4) in the padded image: two zero rows on top, columns shifted left by two.
    assert torch.count_nonzero(shifted[:, :, :2]) == 0
    assert torch.equal(shifted[:, :, 2:, :4], x[:, :, :4, 2:])
    assert torch.count_nonzero(shifted[:, :, :, 4:]) == 0


def test_normalize_standardises_each_channel():
    x = torch.randint(0, 256, (500, 3, 4, 4), dtype=torch.uint8)
    mean, std = channel_stats(x)
    z = normalize(x, mean, std)
    assert z.dtype == torch.float32
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_a_constant_channel_is_left_unscaled():
    x = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    x[:, 1] = 7  # green never varies (a dataset of red and blue objects)
    mean, std = channel_stats(x)
    assert std[1] == 1.0 and mean[1] == pytest.approx(7 / 255)
    assert torch.isfinite(normalize(x, mean, std)).all()


def make_loader(**kw):
    x = images(64, 1, 8)
    y = torch.arange(64) % 10
    return DeviceLoader(x, y, batch_size=16, mean=[0.5], std=[0.25], pad_crop=2, flip=True, **kw)


def test_epoch_is_a_permutation_and_deterministic_under_seed():
    loader = make_loader(seed=3)
    labels = torch.cat([y for _, y in loader.epoch(0)])
    assert sorted(labels.tolist()) == sorted((torch.arange(64) % 10).tolist())
    a = [x for x, _ in make_loader(seed=3).epoch(5)]
    b = [x for x, _ in make_loader(seed=3).epoch(5)]
    c = [x for x, _ in make_loader(seed=4).epoch(5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert not torch.equal(loader.plan(0).order, loader.plan(1).order)


def test_resuming_mid_epoch_yields_the_remaining_batches():
    loader = make_loader(seed=7)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_batch=2))
    assert len(tail) == len(full) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], tail))


def test_augmentation_flips_about_half_and_crops_vary():
    loader = make_loader(seed=0)
    plan = loader.plan(0)
    assert 0.3 < plan.flip.float().mean() < 0.7
    assert plan.dy.min() >= 0 and plan.dy.max() <= 4 and len(plan.dy.unique()) > 1


def test_training_batches_are_each_images_own_crop_flip_and_label():
    """Each training example is its own image, zero-padded and cut at the plan's (dy, dx) as (row, column),
    mirrored where the plan says, then normalised per channel, with its own label: written out with NumPy."""
    x, mean, std = images(64, 2, 8), np.array([0.5, 0.3]), np.array([0.25, 0.2])
    loader = DeviceLoader(x, torch.arange(64), batch_size=16, mean=mean.tolist(), std=std.tolist(), pad_crop=2,
                          flip=True, seed=9)
    plan = loader.plan(3)
    assert (plan.dy != plan.dx).any() and plan.flip.any() and not plan.flip.all()  # a swap or a lost flip shows
    batches = list(loader.epoch(3))
    got, labels = torch.cat([b for b, _ in batches]).numpy(), torch.cat([y for _, y in batches])
    assert torch.equal(labels, plan.order)  # label i is example i's
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for k, i in enumerate(plan.order.tolist()):
        dy, dx = int(plan.dy[i]), int(plan.dx[i])
        crop = padded[i, :, dy:dy + 8, dx:dx + 8]
        crop = crop[:, :, ::-1] if plan.flip[i] else crop
        np.testing.assert_allclose(got[k], (crop / 255 - mean[:, None, None]) / std[:, None, None], rtol=0, atol=1e-5)


def test_eval_loader_keeps_order_and_every_example():
    x = images(50, 1, 8)
    y = torch.arange(50)
    loader = DeviceLoader(x, y, batch_size=16, mean=[0.0], std=[1.0], train=False, pad_crop=4, flip=True)
    assert len(loader) == 4
    got = list(loader)
    assert torch.equal(torch.cat([b for _, b in got]), y)
    assert torch.allclose(torch.cat([a for a, _ in got]), x.float() / 255)


def test_folder_loader_streams_the_same_batches_as_memory(tmp_path):
    """A folder decoded by DataLoader workers gives exactly the batches of the same images held in memory."""
    from resnetlab.data import get_dataset
    from resnetlab.loader import FolderLoader, make_loader

    noise_photos(tmp_path, ("cat", "dog"), 12, lambda i: (10, 10))
    folder = get_dataset(f"folder:{tmp_path}", split="train", image_size=10, val_fraction=0.25, seed=0)
    arrays = folder.to_arrays()
    kwargs = dict(flip=True, seed=5, pad_crop=2)
    streamed = make_loader(folder, 4, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, workers=0, **kwargs)
    in_memory = make_loader(arrays, 4, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, **kwargs)
    assert isinstance(streamed, FolderLoader) and not isinstance(in_memory, FolderLoader)
    for (xa, ya), (xb, yb) in zip(streamed.epoch(1, start_batch=1), in_memory.epoch(1, start_batch=1), strict=True):
        assert torch.equal(ya, yb)
        assert torch.allclose(xa, xb)


class _NumberedImages(torch.utils.data.Dataset):
    """Image i is a 4x4 grey square of value i; each read is logged with the reading process's id."""

    def __init__(self, log, count: int) -> None:
        self.log, self.count = log, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return torch.full((1, 4, 4), i, dtype=torch.uint8), i % 2


def test_folder_workers_last_the_whole_run_and_an_epoch_left_part_way_leaks_nothing_into_the_next(tmp_path):
    """Where workers are spawned (macOS, Windows) each start imports torch again: they are started
    once, not every epoch. A run stopped mid-epoch, or an epoch's iteration given up, leaves no batch
    of its own to be taken for the next epoch's."""
    from resnetlab.loader import FolderLoader

    log = tmp_path / "pids"
    loader = FolderLoader(_NumberedImages(log, 24), torch.arange(24) % 2, 4, [0.0], [1 / 255], train=True, workers=2, seed=1)
    next(iter(loader.epoch(0)))  # given up after its first batch
    for epoch in (1, 2, 3):
        seen = torch.cat([x[:, 0, 0, 0] for x, _ in loader.epoch(epoch)]).round().long()
        assert torch.equal(seen, loader.plan(epoch).order), epoch
    workers = set(log.read_text().split()) - {str(os.getpid())}  # the loader reads image 0 itself, for its size
    assert len(workers) == 2


@pytest.mark.parametrize("train", [True, False], ids=["training", "test"])
def test_close_stops_the_workers_of_an_epoch_under_way(tmp_path, train):
    """A notebook's `it = loader.epoch(0); next(it)` holds the pass: close() ends its workers all the same,
    a test loader's (one pool a pass) as well as a training loader's (one pool a run)."""
    import multiprocessing

    from resnetlab.loader import FolderLoader

    before = set(multiprocessing.active_children())
    loader = FolderLoader(_NumberedImages(tmp_path / "pids", 24), torch.arange(24) % 2, 4, [0.0], [1 / 255], train=train,
                          workers=2, seed=1)
    epoch = loader.epoch(0)
    next(epoch)
    assert len(set(multiprocessing.active_children()) - before) == 2
    loader.close()
    assert set(multiprocessing.active_children()) - before == set()
    del epoch


def test_folder_scale_crops_are_torchvisions_random_resized_crops_of_the_stored_images(tmp_path):
    """Scale augmentation on a folder cuts each box from the image as stored (its own size and
    proportions), exactly as torchvision's RandomResizedCrop does with the plan's seed for that image."""
    from PIL import Image
    from torchvision import transforms as T

    from resnetlab.data import get_dataset
    from resnetlab.loader import make_loader

    noise_photos(tmp_path, ("cat", "dog"), 6, lambda i: (40, 90) if i % 2 else (70, 30))  # wide and tall, not square
    folder = get_dataset(f"folder:{tmp_path}", split="train", image_size=16, val_fraction=0.0)
    mean, std = [0.5] * 3, [0.25] * 3
    loader = make_loader(folder, 4, mean, std, torch.device("cpu"), train=True, workers=0, flip=True, seed=3,
                         scale_crop=(0.08, 1.0))
    plan = loader.plan(2)
    assert plan.boxes is None and plan.crop_seeds is not None
    batches = list(loader.epoch(2))
    assert len(batches) == 3
    for b, (x, y) in enumerate(batches):
        for k, i in enumerate(plan.order[4 * b: 4 * b + 4].tolist()):
            path, label = folder.samples[i]
            torch.manual_seed(int(plan.crop_seeds[i]))
            crop = T.PILToTensor()(T.RandomResizedCrop(16)(Image.open(path).convert("RGB")))
            crop = crop.flip(-1) if plan.flip[i] else crop
            assert y[k] == label
            assert torch.allclose(x[k], normalize(crop[None], mean, std)[0], atol=1e-6), (b, k)
    # The same batches again when the epoch is started half way, as a resumed run starts it.
    for (xa, _), (xb, _) in zip(loader.epoch(2, start_batch=1), batches[1:], strict=True):
        assert torch.equal(xa, xb)


def test_resized_crop_of_the_whole_image_is_the_image_and_its_mirror():
    x = images(size=8)
    n = len(x)
    whole = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(n, 1)
    out = resized_crop(x, whole, torch.zeros(n, dtype=torch.bool), 8)
    assert torch.allclose(out, x.float(), atol=1e-3)
    mirrored = resized_crop(x, whole, torch.ones(n, dtype=torch.bool), 8)
    assert torch.allclose(mirrored, x.flip(-1).float(), atol=1e-3)


def test_resized_crop_of_a_quarter_lands_on_its_pixels():
    x = images(size=8)
    n = len(x)
    top_left = torch.tensor([[0.25, 0.25, 0.5, 0.5]]).repeat(n, 1)  # centre, width, height as fractions
    out = resized_crop(x, top_left, torch.zeros(n, dtype=torch.bool), 4)
    assert torch.allclose(out, x[:, :, :4, :4].float(), atol=1e-3)
    bottom_right = torch.tensor([[0.75, 0.75, 0.5, 0.5]]).repeat(n, 1)
    zoomed = resized_crop(x, bottom_right, torch.zeros(n, dtype=torch.bool), 8)  # 4x4 pixels blown up to 8x8
    expected = F.interpolate(x[:, :, 4:, 4:].float(), size=8, mode="bilinear", align_corners=False)
    # The first row and column reach half a pixel past the box, into the image around it.
    assert torch.allclose(zoomed[..., 1:, 1:], expected[..., 1:, 1:], atol=1e-3)


def test_random_boxes_lie_inside_the_image_with_the_asked_area():
    boxes = random_boxes(5000, (0.08, 1.0), torch.Generator().manual_seed(0))
    cx, cy, w, h = boxes.unbind(1)
    assert (cx - w / 2 >= -1e-6).all() and (cx + w / 2 <= 1 + 1e-6).all()
    assert (cy - h / 2 >= -1e-6).all() and (cy + h / 2 <= 1 + 1e-6).all()
    inside = (w < 1) & (h < 1)  # boxes not clipped by the image keep their drawn area and aspect
    area, ratio = (w * h)[inside], (w / h)[inside]
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1.0
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert torch.equal(boxes, random_boxes(5000, (0.08, 1.0), torch.Generator().manual_seed(0)))


def test_random_boxes_draw_torchvisions_distributions():
    """Area uniform in the scale range, aspect ratio log-uniform in [3/4, 4/3] (RandomResizedCrop's draws), the
    box's place uniform over where it fits. Areas up to half the image are never clipped, so each is seen whole."""
    from scipy import stats

    boxes = random_boxes(5000, (0.08, 0.5), torch.Generator().manual_seed(1)).double()
    cx, cy, w, h = boxes.unbind(1)
    assert w.max() < 1 and h.max() < 1
    draws = {"area": ((w * h - 0.08) / 0.42), "log ratio": ((w / h).log() - np.log(3 / 4)) / np.log(16 / 9),
             "left": (cx - w / 2) / (1 - w), "top": (cy - h / 2) / (1 - h)}
    for name, u in draws.items():  # each rescaled to what should be uniform on [0, 1]
        assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01, name


def test_scale_augmentation_in_the_loader():
    x, y = images(n=64, c=3, size=16), torch.arange(64) % 10
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, train=True, flip=True, seed=2)
    plain = DeviceLoader(x, y, 16, **kw)
    scaled = DeviceLoader(x, y, 16, scale_crop=(0.25, 0.5), **kw)
    assert plain.plan(0).boxes is None
    assert torch.equal(plain.plan(0).order, scaled.plan(0).order)  # the other draws stay as they were
    (xa, ya), (xb, yb) = next(iter(plain)), next(iter(scaled))
    assert xb.shape == xa.shape and torch.equal(ya, yb) and not torch.allclose(xa, xb)
    assert torch.equal(torch.cat([b for b, _ in scaled.epoch(1)]), torch.cat([b for b, _ in scaled.epoch(1)]))
    test = DeviceLoader(x, y, 16, scale_crop=(0.25, 0.5), **{**kw, "train": False})
    assert test.plan(0).boxes is None  # evaluation sees whole images


def test_scale_crop_is_checked():
    x, y = images(n=8), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="three kinds of crop: set one of them"):
        DeviceLoader(x, y, 4, [0.5], [0.25], pad_crop=2, scale_crop=(0.5, 1.0))
    with pytest.raises(ValueError, match="area fractions"):
        DeviceLoader(x, y, 4, [0.5], [0.25], scale_crop=(0.0, 1.0))


def test_folder_workers_default_to_the_cpus_and_refuse_negatives(tmp_path):
    from PIL import Image

    from resnetlab.data import get_dataset
    from resnetlab.loader import make_loader

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    folder = get_dataset(f"folder:{tmp_path}", split="train", image_size=8, val_fraction=0.25, seed=0)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert make_loader(folder, 2, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True).workers == min(16, cpus)
    assert make_loader(folder, 2, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, workers=3).workers == 3
    with pytest.raises(ValueError, match="--workers must be 0"):
        make_loader(folder, 2, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, workers=-1)


def test_colour_pca_finds_the_direction_colours_vary_along():
    # Pixels spread along (1, 1, 0)/sqrt(2) (std 40 grey levels) plus a little noise on every channel.
    g = torch.Generator().manual_seed(0)
    along = torch.randn(20_000, generator=g) * 40
    noise = torch.randn(3, 20_000, generator=g) * 2
    pixels = (128 + torch.stack([along, along, torch.zeros_like(along)]) / 2**0.5 + noise).round().clamp(0, 255)
    images = pixels.to(torch.uint8).T.reshape(200, 100, 3).permute(0, 2, 1)[..., None]  # (200, 3, 100, 1)
    pca = colour_pca(images)
    eigval, eigvec = torch.tensor(pca["eigval"]), torch.tensor(pca["eigvec"])
    assert eigval[0] == pytest.approx((40 / 255) ** 2, rel=0.05) and eigval[1] < eigval[0] / 100
    assert abs(eigvec[:, 0] @ torch.tensor([1.0, 1.0, 0.0]) / 2**0.5) == pytest.approx(1.0, abs=1e-3)
    # More pixels than asked for (every ImageNet-size folder): a seeded sample finds the same direction.
    sampled = colour_pca(images, pixels=5_000, seed=1)
    assert sampled != pca and sampled == colour_pca(images, pixels=5_000, seed=1)
    assert sampled["eigval"][0] == pytest.approx(pca["eigval"][0], rel=0.1)
    assert abs(torch.tensor(sampled["eigvec"])[:, 0] @ eigvec[:, 0]) == pytest.approx(1.0, abs=1e-3)


def test_the_colour_components_of_grey_images_are_their_brightness():
    images = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pca = colour_pca(images)
    assert pca["eigvec"] == [[1.0]]
    assert pca["eigval"][0] == pytest.approx((images.double() / 255).var().item(), rel=1e-6)


def test_colour_noise_shifts_each_image_along_the_components():
    """AlexNet's lighting: image i moves by sum_k alpha_ik * eigval_k * eigvec_k, alpha ~ N(0, lighting)."""
    x = torch.full((32, 3, 4, 4), 100, dtype=torch.uint8)
    y = torch.zeros(32, dtype=torch.long)
    pca = {"eigval": [0.2, 0.02, 0.004], "eigvec": torch.linalg.qr(torch.randn(3, 3))[0].tolist()}
    mean, std = [0.4, 0.4, 0.4], [0.2, 0.25, 0.5]
    plain = DeviceLoader(x, y, 32, mean, std, seed=1)
    noisy = DeviceLoader(x, y, 32, mean, std, seed=1, lighting=0.1, colour_pca=pca)
    plan = noisy.plan(0)
    assert plan.lighting.shape == (32, 3) and plan.lighting.std() == pytest.approx(0.1, rel=0.3)
    assert torch.equal(plan.order, plain.plan(0).order)  # the colour draws come after the rest
    (a, _), (b, _) = next(iter(plain)), next(iter(noisy))
    eigval, eigvec = torch.tensor(pca["eigval"]), torch.tensor(pca["eigvec"])
    expected = (plan.lighting[plan.order] * eigval) @ eigvec.T / torch.tensor(std)
    assert torch.allclose(b - a, expected[:, :, None, None].expand_as(a), atol=1e-5)
    test = DeviceLoader(x, y, 32, mean, std, train=False, lighting=0.1, colour_pca=pca)
    assert torch.equal(next(iter(test))[0], a)  # no noise at evaluation


def test_a_folders_statistics_come_from_a_seeded_sample_decoded_by_workers(tmp_path):
    from resnetlab.data import get_dataset
    from resnetlab.loader import stats_sample

    noise_photos(tmp_path, ("a", "b", "c"), 10, lambda i: (20 + i, 30))
    folder = get_dataset(f"folder:{tmp_path}", "train", image_size=12, val_fraction=0.0)
    sample = stats_sample(folder, sample=7, seed=4, workers=2)
    picks = torch.randperm(30, generator=torch.Generator().manual_seed(4))[:7].tolist()
    assert torch.equal(sample, torch.stack([folder[i][0] for i in picks]))
    arrays = folder.to_arrays()
    assert stats_sample(arrays, sample=7) is arrays.images  # in memory: every image


def test_decoding_leaves_the_global_generator_and_the_exit_alone(tmp_path):
    """The workers' base seed comes from the loader's own generator, not the caller's (a run puts the
    caller's back as it found it); and workers a script never stopped do not hold up its exit
    (multiprocessing ends them with SIGTERM at exit, and waits for each)."""
    import subprocess
    import sys

    from resnetlab.loader import decode_in_workers

    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert len(list(decode_in_workers(_NumberedImages(tmp_path / "log", 8), batch_size=4, num_workers=1))) == 2
    assert torch.equal(torch.get_rng_state(), before)

    script = ("import torch\n"
              "from resnetlab.loader import FolderLoader\n"
              "class Images(torch.utils.data.Dataset):\n"
              "    def __len__(self):\n"
              "        return 16\n"
              "    def __getitem__(self, i):\n"
              "        return torch.full((1, 4, 4), i, dtype=torch.uint8), i % 2\n"
              "loader = FolderLoader(Images(), torch.arange(16) % 2, 4, [0.0], [1.0], workers=2)\n"
              "next(iter(loader.epoch(0)))  # its workers left running, as a script may leave them\n"
              "print('done')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
