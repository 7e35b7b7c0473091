"""The peers (rsdistill.peers): DM and M3D from real images, the m3d objective, the command, the networks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdistill.cli.main import main
from rsdistill.core.config import RefineConfig
from rsdistill.core.errors import RSDistillError
from rsdistill.data.context import RunContext
from rsdistill.data.imageset import read_image_set
from rsdistill.data.sources import load_dataset
from rsdistill.evaluate.networks import MODELS, build_network, penultimate
from rsdistill.peers import write_peer
from rsdistill.synthesis.objectives import gaussian_mmd2, matching_loss
from rsdistill.synthesis.refine import check_refine, refine_images, stage_settings

TINY = RefineConfig(iterations=3, width=8, depth=2, real_per_class=4, checkpoint_every=2, compile=False)


@pytest.mark.parametrize("method", ["dm", "m3d"])
def test_peer_writes_a_set_from_real_images_in_the_common_format(
    method: str, make_imagefolder: Callable[..., Path], tmp_path: Path
) -> None:
    dataset = load_dataset(f"imagefolder:{make_imagefolder(size=16)}")
    context = RunContext.of(dataset, resolution=16)
    set_dir = write_peer(context, TINY, tmp_path / method, method, 2)
    peer = read_image_set(set_dir, dataset.classes)
    assert peer.images.shape == (6, 16, 16, 3)
    assert np.array_equal(np.bincount(peer.labels), [2, 2, 2])
    assert {r["method"] for r in peer.records} == {method}
    assert all(r["from_real_images"] and r["source_key"] for r in peer.records)
    assert {r["objective"] for r in peer.records} == {"mean" if method == "dm" else "m3d"}
    start = read_image_set(tmp_path / method / "coreset", dataset.classes)
    assert not np.array_equal(peer.images, start.images)  # refined, not the coreset as drawn
    again = write_peer(context, TINY, tmp_path / f"{method}-again", method, 2)
    assert np.array_equal(read_image_set(again, dataset.classes).images, peer.images)  # seeded


def test_peer_refuses_an_unknown_method_and_ipc(make_imagefolder: Callable[..., Path], tmp_path: Path) -> None:
    context = RunContext.of(load_dataset(f"imagefolder:{make_imagefolder(size=16)}"), resolution=16)
    with pytest.raises(RSDistillError, match="--method"):
        write_peer(context, TINY, tmp_path / "x", "ncfm", 2)
    with pytest.raises(RSDistillError, match="--ipc"):
        write_peer(context, TINY, tmp_path / "x", "dm", 0)


def test_peer_command(
    make_imagefolder: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_imagefolder(size=16)
    main(["peer", "--method", "m3d", "--ipc", "1", "--out", str(tmp_path / "p"), "--dataset", f"imagefolder:{root}",
          "--resolution", "16", "refine.iterations=2", "refine.width=8", "refine.depth=2",
          "refine.real_per_class=4", "refine.compile=false"])
    assert "m3d (from real images)" in capsys.readouterr().out
    assert {r["method"] for r in read_image_set(tmp_path / "p" / "set", ["forest", "lake", "town"]).records} == {"m3d"}


def test_mmd_is_zero_for_identical_embeddings_and_first_order_the_mean_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(16, 8, generator=generator)
    assert gaussian_mmd2(real, real.clone()).item() == pytest.approx(0.0, abs=1e-4)
    assert gaussian_mmd2(real, real.flip(0)).item() == pytest.approx(0.0, abs=1e-4)  # a multiset
    # A small shift of the synthetic side: the scaled MMD^2 is of the order of the squared distance of the means
    # (equal to it for a kernel much wider than the sample).
    shift = torch.full((8,), 0.01)
    ratio = gaussian_mmd2(real, real + shift).item() / shift.pow(2).sum().item()
    assert 0.1 < ratio < 1
    # Same means, different spread: mean matching sees nothing, MMD does.
    spread = real.mean(0) + 2 * (real - real.mean(0))
    assert (real.mean(0) - spread.mean(0)).abs().max() < 1e-5
    assert gaussian_mmd2(real, spread).item() > 1e-3


def test_m3d_objective_changes_the_loss_and_the_images() -> None:
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(3, 5, 4, generator=generator)
    fake = torch.randn(6, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    one_hot = torch.nn.functional.one_hot(labels, 3).T.float()
    class_means = one_hot / one_hot.sum(1, keepdim=True)
    mean = matching_loss("mean", real, fake, labels, class_means)
    m3d = matching_loss("m3d", real, fake, labels, class_means)
    assert mean.item() == pytest.approx((real.mean(1) - class_means @ fake).pow(2).sum().item())
    assert m3d.item() != pytest.approx(mean.item()) and m3d.item() > 0
    with pytest.raises(RSDistillError, match=r"refine\.objective"):
        check_refine(replace(TINY, objective="ncfm"))
    assert "objective" not in stage_settings(TINY)  # stages refined before the setting keep their fingerprint
    assert stage_settings(replace(TINY, objective="m3d"))["objective"] == "m3d"


def test_m3d_refinement_is_seeded_and_differs_from_mean_matching() -> None:
    from rsdistill.data.dataset import ImageArray

    rng = np.random.default_rng(0)
    real = ImageArray(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.repeat(np.arange(3), 4),
                      [f"k{i}" for i in range(12)])
    images, labels = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), np.repeat(np.arange(3), 2)
    m3d = replace(TINY, objective="m3d", learning_rate=10.0)
    one, report = refine_images(images, labels, real, 3, m3d, seed=0, progress=False)
    two, _ = refine_images(images, labels, real, 3, m3d, seed=0, progress=False)
    mean, _ = refine_images(images, labels, real, 3, replace(m3d, objective="mean"), seed=0, progress=False)
    assert report["objective"] == "m3d"
    assert np.array_equal(one, two) and not np.array_equal(one, mean) and not np.array_equal(one, images)


@pytest.mark.parametrize("name", ["resnet18-in", "efficientnet-lite0"])
def test_cross_architecture_networks_give_logits_features_and_train(name: str) -> None:
    assert name in MODELS
    torch.manual_seed(0)
    model = build_network(name, 5, resolution=32)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert model(x).shape == (4, 5)
    assert penultimate(model, x).shape[0] == 4
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_resnet18_in_is_the_low_resolution_variant() -> None:
    model = build_network("resnet18-in", 10)
    stem = model.features[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d | torch.nn.BatchNorm2d) for m in model.modules())
    assert penultimate(model, torch.rand(2, 3, 64, 64)).shape == (2, 512)
