"""Device-side batches: augmentation properties, normalisation, determinism."""

import torch
import torch.nn.functional as F

from resnetlab.loader import DeviceLoader, channel_stats, crop_and_flip, normalize


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
    from PIL import Image

    from resnetlab.data import get_dataset
    from resnetlab.loader import FolderLoader, make_loader

    rng = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            pixels = torch.randint(0, 256, (10, 10, 3), dtype=torch.uint8, generator=rng).numpy()
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    folder = get_dataset(f"folder:{tmp_path}", split="train", image_size=10, val_fraction=0.25, seed=0)
    arrays = folder.to_arrays()
    kwargs = dict(pad_crop=2, flip=True, seed=5)
    streamed = make_loader(folder, 4, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, workers=0, **kwargs)
    in_memory = make_loader(arrays, 4, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, **kwargs)
    assert isinstance(streamed, FolderLoader) and not isinstance(in_memory, FolderLoader)
    for (xa, ya), (xb, yb) in zip(streamed.epoch(1, start_batch=1), in_memory.epoch(1, start_batch=1), strict=True):
        assert torch.equal(ya, yb)
        assert torch.allclose(xa, xb)
