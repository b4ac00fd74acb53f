"""GradCAM for the project's ResNet18, batched, in the style of pytorch-grad-cam.

`BaseCAM` fixes the sequence -- forward, choose targets, backward, channel weights, cam --
and a method only says how it weights the channels (`GradCAM`: spatially pooled
gradients).  The maps agree with `pytorch_grad_cam.GradCAM` (one target layer at a time)
to within 1e-4, because the order of operations is the library's:

    cam = ReLU(sum_c w_c * A_c)  ->  min-max scale  ->  bilinear resize to the input
        ->  ReLU  ->  min-max scale again            (the library's "aggregate" step)

but the whole batch and every requested layer go through one forward and one backward
on the model's device, with torch ops instead of numpy/cv2.

    with GradCAM(model, ["layer1", "layer4"]) as cam:
        out = cam(images, targets=None)     # None: each image's predicted class
    out.maps["layer4"]                       # float32 [B, H, W] in [0, 1]
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distributed.model import LAYER_NAMES, gradcam_layers, unwrap

# The library's guard against dividing by a zero maximum (an all-zero cam stays zero).
_EPS = 1e-7


class CamOutput(NamedTuple):
    """What one GradCAM call returns."""

    maps: dict[str, torch.Tensor]   # layer name -> float32 [B, H, W] in [0, 1], on the model's device
    logits: torch.Tensor            # float32 [B, num_classes], detached
    targets: torch.Tensor           # int64 [B]: the class each map explains


class BaseCAM:
    """Class-activation maps from the named layers of a ResNet (`layer1..layer4`).

    Subclasses implement `get_cam_weights`.  Use as a context manager: hooks live on the
    layers only inside the `with` block (calling outside one hooks for that call alone).
    The model runs in eval mode with gradients enabled whatever the caller's context;
    its training mode is restored and no parameter's `requires_grad` or `.grad` changes.
    """

    def __init__(self, model: nn.Module, target_layers: Sequence[str] | None = None) -> None:
        # Hooks go on the real modules: a DDP or torch.compile wrapper would route the forward
        # through a graph that may not call Python hooks.
        self.model = unwrap(model)
        available = gradcam_layers(self.model)
        names = tuple(target_layers) if target_layers is not None else LAYER_NAMES
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            raise ValueError(f"unknown GradCAM layer(s) {unknown or names!r}; choose from {LAYER_NAMES}")
        self.layer_names = names
        self._layers = {n: available[n] for n in names}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._activations: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks
    def __enter__(self) -> "BaseCAM":
        if not self._handles:
            for name, layer in self._layers.items():
                self._handles.append(layer.register_forward_hook(self._saver(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the hooks and drop the captured activations (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._activations.clear()

    def _saver(self, name: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self._activations[name] = output
        return hook

    # ------------------------------------------------------------------ method hooks
    def get_cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights [B, C] from activations and gradients [B, C, h, w]."""
        raise NotImplementedError

    def get_cam_image(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the activation channels, [B, h, w] (before ReLU)."""
        weights = self.get_cam_weights(activations, grads)
        return (weights[:, :, None, None] * activations).sum(dim=1)

    # ------------------------------------------------------------------ the sequence
    def __call__(self, images: torch.Tensor,
                 targets: torch.Tensor | Sequence[int] | int | None = None) -> CamOutput:
        """Maps for a batch of normalised images [B, 3, H, W].

        `targets`: None for each image's predicted class, one int for the same class on every
        image, or one class id per image.
        """
        if images.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        if not self._handles:
            with self:
                return self(images, targets)

        param = next(self.model.parameters())
        was_training = self.model.training
        self.model.eval()
        try:
            # inference_mode(False) + enable_grad: build a graph even when called from a
            # no_grad / inference_mode block (an evaluation loop, say).
            with torch.inference_mode(False), torch.enable_grad():
                # Gradients flow through the input, so the graph exists even if the caller froze
                # every parameter; autograd.grad (not .backward) leaves parameters' .grad alone.
                x = images.detach().to(device=param.device, dtype=param.dtype).clone().requires_grad_(True)
                self._activations.clear()
                given = self._given_targets(targets, x.shape[0])
                logits = self.model(x)
                target_ids = self._target_ids(given, logits)
                # Images are independent in eval mode, so summing the chosen scores gives each
                # image's own gradient in one backward pass.
                score = logits.gather(1, target_ids[:, None]).sum()
                acts = [self._activations[n] for n in self.layer_names]
                grads = torch.autograd.grad(score, acts)
            size = tuple(images.shape[-2:])
            maps = {n: self._cam(a.detach().float(), g.float(), size)
                    for n, a, g in zip(self.layer_names, acts, grads)}
        finally:
            self._activations.clear()
            self.model.train(was_training)
        return CamOutput(maps=maps, logits=logits.detach().float(), targets=target_ids)

    @staticmethod
    def _given_targets(targets: torch.Tensor | Sequence[int] | int | None, batch: int) -> torch.Tensor | None:
        """The caller's targets as int64 [B] (checked before the forward pass), or None for 'predicted'."""
        if targets is None:
            return None
        if isinstance(targets, (int, np.integer)):
            return torch.full((batch,), int(targets), dtype=torch.long)
        ids = targets if torch.is_tensor(targets) else torch.as_tensor(np.asarray(targets))
        ids = ids.to(torch.long).reshape(-1)
        if ids.numel() != batch:
            raise ValueError(f"got {ids.numel()} targets for {batch} images")
        return ids

    @staticmethod
    def _target_ids(given: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        if given is None:
            return logits.detach().argmax(dim=1)
        ids = given.to(logits.device)
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"target class out of range [0, {num_classes})")
        return ids

    def _cam(self, activations: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        cam = torch.relu(self.get_cam_image(activations, grads))
        # Same order as pytorch-grad-cam: scale, resize (cv2 bilinear == align_corners=False when
        # upsampling), then its multi-layer aggregation clips and scales once more.
        cam = _minmax(cam)
        if tuple(cam.shape[-2:]) != size:
            cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return _minmax(torch.relu(cam)).float()


class GradCAM(BaseCAM):
    """GradCAM (Selvaraju et al. 2017): channel weight = spatial mean of the class-score gradient."""

    def get_cam_weights(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled gradients, [B, C]."""
        return grads.mean(dim=(2, 3))


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-image `(cam - min) / (1e-7 + max(cam - min))`, exactly as the library's scale_cam_image."""
    flat = cam.flatten(1)
    shifted = cam - flat.min(dim=1).values[:, None, None]
    return shifted / (_EPS + shifted.flatten(1).max(dim=1).values[:, None, None])


def gradcam_all_classes(model: nn.Module, image: torch.Tensor,
                        target_layers: Sequence[str] | None = None) -> CamOutput:
    """GradCAM of one normalised image [3, H, W] (or [1, 3, H, W]) for every class, as one batch.

    Row k of each map explains class k.
    """
    if image.ndim == 3:
        image = image[None]
    with GradCAM(model, target_layers) as cam:
        # One forward to learn the number of classes would cost as much as the whole call, so
        # read it off the classifier instead.
        num_classes = _num_classes(cam.model)
        return cam(image.expand(num_classes, -1, -1, -1), torch.arange(num_classes))


def _num_classes(model: nn.Module) -> int:
    linear = getattr(model, "linear", None)
    if isinstance(linear, nn.Linear):
        return linear.out_features
    raise ValueError("cannot tell the number of classes: the model has no `linear` classifier")


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [H, W] map in [0, 1] (jet colour map) over an RGB image, float [H, W, 3] in [0, 1].

    Same blend as pytorch-grad-cam's `show_cam_on_image` with `image_weight = 1 - alpha`.
    """
    from matplotlib import colormaps  # local: importing gradcam must not pull in matplotlib

    img = image.astype(np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3].astype(np.float32)
    out = alpha * heat + (1.0 - alpha) * img
    return out / max(float(out.max()), 1e-7)
