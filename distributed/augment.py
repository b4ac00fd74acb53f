"""Augmentation and the model's input: Albumentations 2.x on uint8 in the loader workers, the
float arithmetic once per batch on the device.

Every probability and strength is an `AugConfig` field (the search samples them), and every one is
an Albumentations transform applied in the loader workers, image by image. What crosses the worker
boundary, pinned memory and the host-to-device copy is the uint8 batch [B, 32, 32, 3]: a quarter of
the bytes of the float32 batch the workers used to send. `ModelInput` turns it into the model's
input on the device: float, normalised with the training split's statistics, NCHW in the memory
format the model runs in. Evaluation batches get no transform at all.
"""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import torch

from distributed.config import AugConfig, TrainConfig, schedule_index

IMAGE_SIZE = 32


def _augmentations(aug: AugConfig) -> list[A.BasicTransform]:
    """Pad + random crop, flip, affine, colour: uint8 in, uint8 out."""
    t: list[A.BasicTransform] = []
    if aug.pad > 0:
        # Reflect padding (not zeros) keeps crops free of black borders the model could key on.
        t += [A.PadIfNeeded(IMAGE_SIZE + 2 * aug.pad, IMAGE_SIZE + 2 * aug.pad,
                            border_mode=cv2.BORDER_REFLECT_101, p=1.0),
              A.RandomCrop(IMAGE_SIZE, IMAGE_SIZE, p=1.0)]
    t.append(A.HorizontalFlip(p=aug.flip_p))
    t.append(A.Affine(translate_percent=(-aug.shift_limit, aug.shift_limit),
                      scale=(1 - aug.scale_limit, 1 + aug.scale_limit),
                      rotate=(-aug.rotate_limit, aug.rotate_limit),
                      border_mode=cv2.BORDER_REFLECT_101, p=aug.affine_p))
    t.append(A.HueSaturationValue(hue_shift_limit=aug.hue_shift, sat_shift_limit=aug.sat_shift,
                                  val_shift_limit=aug.val_shift, p=aug.color_p))
    t.append(A.RandomBrightnessContrast(brightness_limit=aug.brightness, contrast_limit=aug.contrast,
                                        p=aug.color_p))
    return t


def _cutout(aug: AugConfig, fill) -> A.CoarseDropout:
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(aug.cutout_min, aug.cutout_max),
                           hole_width_range=(aug.cutout_min, aug.cutout_max), fill=fill, p=aug.cutout_p)


def _compose(t: list[A.BasicTransform]) -> A.Compose:
    # Transforms with p=0 are dropped: they would only cost a random draw per image.
    return A.Compose([x for x in t if x.p > 0], seed=0)


def mean_pixel(mean: Sequence[float]) -> tuple[int, ...]:
    """The training split's mean colour as a uint8 pixel (what a cutout hole is filled with)."""
    return tuple(int(round(255 * m)) for m in mean)


def build_train_transform(aug: AugConfig, mean: Sequence[float]) -> A.Compose:
    """Pad + random crop, flip, affine, colour, then cutout filled with the mean pixel; uint8 out.

    Normalised on the device (`ModelInput`), the hole is ~0 (within half a grey level of the mean):
    it carries no colour information, as when the fill was 0 after Normalize."""
    return _compose([*_augmentations(aug), _cutout(aug, mean_pixel(mean))])


class ScheduledTransform:
    """A training schedule's transforms, one per entry: `CifarDataset` asks `for_epoch(e)` with the
    epoch each batch carries, so persistent loader workers change augmentation at epoch boundaries
    without being rebuilt."""

    def __init__(self, transforms: list[A.Compose], epochs: int) -> None:
        self.transforms, self.epochs = transforms, epochs

    def for_epoch(self, epoch: int) -> A.Compose:
        return self.transforms[schedule_index(epoch, self.epochs, len(self.transforms))]


def build_run_transform(cfg: TrainConfig, mean: Sequence[float]) -> A.Compose | ScheduledTransform:
    """The training transform of a run: `build_train_transform(cfg.aug)`, or with `cfg.aug_schedule`
    one per schedule entry (each the run's augmentation with that entry's values)."""
    if not cfg.aug_schedule:
        return build_train_transform(cfg.aug, mean)
    return ScheduledTransform([build_train_transform(cfg.with_entry(entry).aug, mean)
                               for entry in cfg.aug_schedule], cfg.epochs)


def build_float_train_transform(aug: AugConfig, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """The pipeline before 2026-12: the same augmentation, then Normalize and the cutout on float32
    in the workers. Not used for training: the baseline `benchmarks/bench_input.py` measures the
    uint8 pipeline against, and the reference the tests compare `ModelInput` with."""
    return _compose([*_augmentations(aug), A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
                     _cutout(aug, 0.0)])


class ModelInput:
    """uint8 batches [B, H, W, C] -> the model's float input [B, C, H, W], normalised, on their device.

    x * (1 / (255 std)) - mean / std in float32 (autocast then runs the model in bf16 where asked),
    written in one pass: the dtype change, the multiply-add and (off the GPU) the layout change are
    one `addcmul` into the output. The NHWC batch seen as NCHW already has channels_last strides,
    which GPU convolutions prefer; elsewhere (CPU convolutions are ~3x slower in it) the output is
    contiguous NCHW. One pass where there were four off the GPU (the uint8 layout copy, the float
    copy, the multiply, the add) and three kernel launches on it (measured: see `bench_input`'s
    `consumer_ms_per_batch`); on a CPU that is time the training process no longer takes from the
    loader workers it shares the cores with.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool) -> None:
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
        self.neg_shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._on:  # the constants go to each device once, not once per batch
            self._on[x.device] = self.scale.to(x.device), self.neg_shift.to(x.device)
        scale, neg_shift = self._on[x.device]
        x = x.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels_last strides
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=self.memory_format)
        return torch.addcmul(neg_shift, x, scale, out=out)  # neg_shift + x * scale, uint8 read as float
