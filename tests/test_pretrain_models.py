"""runtime/pretrain/contrastive.py and mim.py: the losses and the Free-ATM switches."""

from __future__ import annotations

import math

import pytest
import torch

from freeatm.runtime.backbones import create_backbone
from freeatm.runtime.pretrain.contrastive import ContrastiveModel, mask_pool, nt_xent, silhouettes
from freeatm.runtime.pretrain.mim import MAEModel, patch_coverage, patchify, sample_mask

torch.set_num_threads(1)


def test_nt_xent_prefers_aligned_pairs() -> None:
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    aligned = nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(8)], 0.2)
    assert aligned < shuffled
    assert nt_xent(z, torch.randn(8, 16), 1.0) == pytest.approx(math.log(15), rel=0.3)


def test_mask_pool_averages_inside_each_object() -> None:
    features = torch.zeros(1, 2, 4, 4)
    features[0, 0, :2, :2] = 3.0  # object 1's cells
    features[0, 1, 2:, 2:] = 5.0  # object 2's cells
    labels = torch.zeros(1, 16, 16, dtype=torch.uint8)
    labels[0, :8, :8], labels[0, 8:, 8:] = 1, 2
    pooled, area = mask_pool(features, labels, objects=3)
    assert torch.allclose(pooled[0, 0], torch.tensor([3.0, 0.0]))
    assert torch.allclose(pooled[0, 1], torch.tensor([0.0, 5.0]))
    assert area[0].tolist() == [4.0, 4.0, 0.0]


def _pair(b: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    labels = torch.zeros(b, size, size, dtype=torch.uint8)
    labels[:, 2:18, 2:18], labels[:, 18:30, 16:30] = 1, 2
    return {
        "view1": torch.randn(b, 3, size, size),
        "view2": torch.randn(b, 3, size, size),
        "mask1": labels,
        "mask2": labels.flip(-1),
    }


@pytest.mark.parametrize("backbone", ["vit_tiny_patch8", "resnet18_os8"])
def test_contrastive_switch(backbone: str) -> None:
    batch = _pair(size=16 if backbone == "resnet18_os8" else 32)
    torch.manual_seed(0)
    plain = ContrastiveModel(create_backbone(backbone, batch["view1"].shape[-1]), object_contrast=False)
    torch.manual_seed(0)
    guided = ContrastiveModel(create_backbone(backbone, batch["view1"].shape[-1]), object_contrast=True)
    loss_plain, parts_plain = plain(batch)
    loss_guided, parts_guided = guided(batch)
    assert "objectLoss" not in parts_plain and parts_guided["objectLoss"] > 0
    # same baseline term
    assert parts_guided["imageLoss"] == pytest.approx(parts_plain["imageLoss"], rel=1e-5)
    assert float(loss_guided.detach()) == pytest.approx(
        parts_guided["imageLoss"] + parts_guided["objectLoss"], rel=1e-5
    )
    loss_guided.backward()
    assert all(p.grad is not None for p in guided.parameters() if p.requires_grad)


def test_object_term_has_its_own_temperature() -> None:
    batch = _pair()
    losses = []
    for temperature in (0.1, 0.5):
        torch.manual_seed(0)
        model = ContrastiveModel(
            create_backbone("vit_tiny_patch8", 32), object_contrast=True, object_temperature=temperature
        )
        losses.append(model(batch)[1])
    assert losses[0]["imageLoss"] == pytest.approx(losses[1]["imageLoss"], rel=1e-6)
    assert losses[0]["objectLoss"] != pytest.approx(losses[1]["objectLoss"], rel=1e-3)


def test_mask_pool_with_a_grid_that_does_not_divide_the_image() -> None:
    # a ResNet's 3×3 map of a 40 px image (stride 16, rounded up)
    features = torch.arange(9.0).reshape(1, 1, 3, 3)
    labels = torch.ones(1, 40, 40, dtype=torch.uint8)
    pooled, area = mask_pool(features, labels, objects=1)
    assert area[0, 0] == pytest.approx(9.0) and pooled[0, 0, 0] == pytest.approx(4.0)


def test_object_term_without_objects_is_zero_but_differentiable() -> None:
    batch = _pair()
    batch["mask1"] = torch.zeros_like(batch["mask1"])
    model = ContrastiveModel(create_backbone("vit_tiny_patch8", 32), object_contrast=True)
    loss, parts = model(batch)
    assert parts["objectLoss"] == 0.0
    loss.backward()


def test_silhouettes_are_each_mask_inside_its_own_box() -> None:
    labels = torch.zeros(1, 32, 32, dtype=torch.uint8)
    labels[0, 4:12, 4:20] = 1  # a filled 8×16 box
    labels[0, 20:28, 20:28] = 2  # an L: an 8×8 box without its lower right quarter
    labels[0, 24:28, 24:28] = 0
    labels[0, 30, 30] = 3  # not seen: no target
    targets = silhouettes(labels, torch.tensor([[True, True, False]]), size=2).view(2, 2, 2)
    assert targets[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # the box is the object's own, whatever its size
    assert targets[1].tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_silhouette_term_alone_trains_the_backbone_through_the_pooled_features() -> None:
    batch = _pair()
    torch.manual_seed(0)
    model = ContrastiveModel(create_backbone("vit_tiny_patch8", 32), image_loss=False, silhouette=True)
    assert model.projector is None  # nothing would train it
    loss, parts = model(batch)
    assert set(parts) == {"silhouetteLoss"} and float(loss.detach()) == pytest.approx(parts["silhouetteLoss"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.backbone.parameters())


def test_all_terms_add_with_their_weights() -> None:
    batch = _pair()
    torch.manual_seed(0)
    model = ContrastiveModel(
        create_backbone("vit_tiny_patch8", 32),
        object_contrast=True,
        silhouette=True,
        silhouette_loss_weight=0.5,
    )
    loss, parts = model(batch)
    assert float(loss.detach()) == pytest.approx(
        parts["imageLoss"] + parts["objectLoss"] + 0.5 * parts["silhouetteLoss"], rel=1e-5
    )


def test_silhouette_term_without_objects_is_zero_but_differentiable() -> None:
    batch = _pair()
    batch["mask1"], batch["mask2"] = torch.zeros_like(batch["mask1"]), torch.zeros_like(batch["mask2"])
    model = ContrastiveModel(create_backbone("vit_tiny_patch8", 32), image_loss=False, silhouette=True)
    loss, parts = model(batch)
    assert parts["silhouetteLoss"] == 0.0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_guided_masking_masks_objects_first_at_the_same_ratio() -> None:
    b, n = 64, 16
    coverage = torch.zeros(b, n)
    coverage[:, :3] = 1.0  # 3 object patches of 16
    keep = 4  # 75 % masked
    g = torch.Generator().manual_seed(0)
    guided = sample_mask(b, n, coverage, True, g)
    uniform = sample_mask(b, n, coverage, False, g)
    for order in (guided, uniform):
        assert sorted(order[0].tolist()) == list(range(n))  # a permutation: same number masked
    masked_object_share = lambda order: float((order[:, keep:] < 3).sum()) / (3 * b)  # noqa: E731
    assert masked_object_share(guided) > 0.99
    assert masked_object_share(uniform) == pytest.approx(0.75, abs=0.1)


def test_hints_keep_a_share_of_object_patches_visible() -> None:
    b, n, keep = 256, 16, 4
    coverage = torch.zeros(b, n)
    coverage[:, :6] = 1.0  # 6 object patches of 16
    orders = {
        share: sample_mask(b, n, coverage, True, torch.Generator().manual_seed(0), share)
        for share in (0.0, 0.25)
    }
    visible_objects = {share: float((o[:, :keep] < 6).sum()) / (6 * b) for share, o in orders.items()}
    assert visible_objects[0.0] < 0.01  # AttMask-High: objects masked first
    assert visible_objects[0.25] == pytest.approx(0.25, abs=0.04)  # hints: a quarter stays visible
    for order in orders.values():
        assert (order.sort(dim=1).values == torch.arange(n)).all()  # a permutation: the same number masked
    uniform = sample_mask(b, n, coverage, False, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, sample_mask(b, n, None, True, torch.Generator().manual_seed(0)))


def test_patchify_and_coverage() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    patches = patchify(images, 16)
    assert patches.shape == (2, 4, 16 * 16 * 3)
    assert patches[0, 1, 0] == images[0, 0, 0, 16]
    labels = torch.zeros(1, 32, 32)
    labels[0, :16, :8] = 2
    assert patch_coverage(labels, 16).tolist() == [[0.5, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(("guided", "weighted"), [(False, False), (True, False), (True, True)])
def test_mae_switches(guided: bool, weighted: bool) -> None:
    torch.manual_seed(0)
    model = MAEModel(create_backbone("vit_tiny", 64), guided_masking=guided, object_weighted_loss=weighted)
    labels = torch.zeros(4, 64, 64, dtype=torch.uint8)
    labels[:, :16, :32] = 1  # 2 of 16 patches
    batch = {"image": torch.randn(4, 3, 64, 64), "mask": labels}
    model.generator = torch.Generator().manual_seed(0)
    loss, parts = model(batch)
    assert float(loss.detach()) > 0 and math.isfinite(float(loss.detach()))
    if guided:
        assert parts["maskedObjectShare"] == 1.0
    loss.backward()
    assert model.backbone.body.blocks[0].attn.qkv.weight.grad is not None


def test_mae_without_masks_is_plain_mae() -> None:
    model = MAEModel(create_backbone("vit_tiny", 32))
    loss, parts = model({"image": torch.randn(2, 3, 32, 32)})
    assert set(parts) == {"reconstructionLoss"}
    with pytest.raises(ValueError, match="ViT"):
        MAEModel(create_backbone("resnet18", 32))


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_optimizers_minimise_and_schedule_warms_up_then_decays(name: str) -> None:
    from freeatm.runtime.pretrain.loop import make_optimizer, make_schedule

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = make_optimizer(model, name, lr=0.05 if name != "lars" else 1.0, weight_decay=1e-4)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4]  # weights decay; biases and norms don't
    schedule = make_schedule(opt, warmup=5, total=60, kind="cosine")
    lrs, first = [], None
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        schedule.step()
    assert float(loss.detach()) < first
    peak = max(lrs)
    assert lrs.index(peak) == 4 and lrs[0] == pytest.approx(peak / 5) and lrs[-1] < peak * 0.01
