"""reporting.gradcam: agreement with pytorch-grad-cam, and no side effects on the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distributed.model import LAYER_NAMES, resnet18
from reporting.gradcam import GradCAM, gradcam_all_classes, overlay

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """A seeded, randomly initialised ResNet18 with non-trivial BatchNorm statistics.

    Fresh BN running stats (mean 0, var 1) would make eval mode nearly an identity; a few
    train-mode forwards give every layer realistic statistics, as a trained model has.
    """
    torch.manual_seed(0)
    m = resnet18(num_classes=10)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 3, 32, 32))
    return m.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 32, 32, generator=g)


def _hooks_firing(cam: GradCAM, model: torch.nn.Module, images: torch.Tensor) -> int:
    """How many of `cam`'s layer hooks a plain forward of `model` triggers (0 once released).
    The probe runs in eval mode and restores the mode, so it changes no BatchNorm statistics."""
    cam._activations.clear()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(images[:1])
    model.train(was_training)
    fired = len(cam._activations)
    cam._activations.clear()
    return fired


def _reference(model, layer_name, images, classes) -> np.ndarray:
    """pytorch-grad-cam on one target layer (it averages several layers into one map)."""
    targets = [ClassifierOutputTarget(int(c)) for c in classes] if classes is not None else None
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[getattr(model, layer_name)]) as cam:
        return cam(input_tensor=images, targets=targets)


@pytest.mark.parametrize("which", ["predicted", "given"])
def test_matches_pytorch_grad_cam_on_every_layer(model, images, which):
    classes = None if which == "predicted" else torch.tensor([3, 0, 9, 5, 5, 1])
    with GradCAM(model, LAYER_NAMES) as cam:
        out = cam(images, classes)
    predicted = model(images).argmax(1)
    expected_targets = predicted if classes is None else classes
    assert torch.equal(out.targets.cpu(), expected_targets)
    assert out.logits.shape == (6, 10)
    for name in LAYER_NAMES:
        ours = out.maps[name]
        assert ours.dtype == torch.float32 and ours.shape == (6, 32, 32)
        assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
        ref = _reference(model, name, images, classes)
        diff = np.abs(ours.cpu().numpy() - ref).max()
        assert diff < 1e-4, f"{name}: max abs diff {diff:.2e}"
        # Not a degenerate all-zero map: the comparison has to mean something.
        assert float(ours.max()) > 0.5


def test_all_ten_classes_on_one_image(model, images, monkeypatch):
    used = []  # the GradCAM the function makes for itself, to check it released its hooks
    enter = GradCAM.__enter__
    monkeypatch.setattr(GradCAM, "__enter__", lambda self: used.append(self) or enter(self))
    out = gradcam_all_classes(model, images[2], ["layer3", "layer4"])
    assert torch.equal(out.targets, torch.arange(10))
    assert set(out.maps) == {"layer3", "layer4"}
    for name, maps in out.maps.items():
        assert maps.shape == (10, 32, 32)
        ref = _reference(model, name, images[2:3].expand(10, -1, -1, -1), range(10))
        assert np.abs(maps.numpy() - ref).max() < 1e-4
    # Different classes explain the image differently.
    assert not torch.allclose(out.maps["layer4"][0], out.maps["layer4"][1])
    assert used and all(_hooks_firing(cam, model, images) == 0 for cam in used)


def test_hooks_released_and_model_state_untouched(images):
    torch.manual_seed(0)
    m = resnet18(num_classes=10)
    m.train()
    m.layer1.requires_grad_(False)              # a caller's frozen layer stays frozen
    requires = [p.requires_grad for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for _ in range(3):                          # repeated use leaks nothing
        with GradCAM(m, ["layer1", "layer4"]) as cam:
            assert _hooks_firing(cam, m, images) == 2
            cam(images[:2])
            assert m.training, "training mode is restored after each call"
        assert _hooks_firing(cam, m, images) == 0
    assert [p.requires_grad for p in m.parameters()] == requires
    assert all(p.grad is None for p in m.parameters())
    # Eval mode inside: BatchNorm running statistics did not move.
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_call_outside_with_block_cleans_up(model, images):
    cam = GradCAM(model, ["layer2"])
    out = cam(images[:1], 4)
    assert set(out.maps) == {"layer2"} and int(out.targets[0]) == 4
    assert _hooks_firing(cam, model, images) == 0


def test_works_under_no_grad_and_inference_mode(model, images):
    with GradCAM(model, ["layer4"]) as cam:
        ref = cam(images[:3]).maps["layer4"]
        with torch.no_grad():
            a = cam(images[:3]).maps["layer4"]
        with torch.inference_mode():
            b = cam(images[:3]).maps["layer4"]
    assert torch.allclose(a, ref) and torch.allclose(b, ref)
    assert float(ref.max()) > 0.5


def test_unwraps_a_compiled_model(model, images):
    # torch.compile only wraps here: GradCAM hooks and runs the inner model, so nothing compiles.
    with GradCAM(torch.compile(model), ["layer4"]) as cam:
        wrapped = cam(images[:2], [1, 2]).maps["layer4"]
    with GradCAM(model, ["layer4"]) as cam:
        plain = cam(images[:2], [1, 2]).maps["layer4"]
    assert torch.equal(wrapped, plain)


def test_unwraps_ddp(model, images, tmp_path):
    """A real DistributedDataParallel wrapper (gloo, one process): hooks go on the inner model."""
    import copy

    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", init_method=(tmp_path / "pg").as_uri(), rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(model))
        with GradCAM(ddp, ["layer3"]) as cam:
            wrapped = cam(images[:2], [1, 2]).maps["layer3"]
        assert _hooks_firing(cam, ddp, images) == 0
    finally:
        dist.destroy_process_group()
    with GradCAM(model, ["layer3"]) as cam:
        assert torch.allclose(wrapped, cam(images[:2], [1, 2]).maps["layer3"], atol=1e-6)


def test_rejects_bad_arguments(model, images):
    with pytest.raises(ValueError, match="unknown GradCAM layer"):
        GradCAM(model, ["fc"])
    with GradCAM(model, ["layer4"]) as cam:
        with pytest.raises(ValueError, match="out of range"):
            cam(images[:2], [0, 10])
        with pytest.raises(ValueError, match="targets for"):
            cam(images[:2], [0, 1, 2])
    assert _hooks_firing(cam, model, images) == 0


def test_overlay_is_an_rgb_image():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cam = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = overlay(img, cam)
    assert out.shape == (32, 32, 3) and out.min() >= 0 and out.max() <= 1.0 + 1e-6
