"""Albumentations 2.x pipelines built from `AugConfig`: every probability and strength is a field."""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2

from distributed.config import AugConfig

IMAGE_SIZE = 32


def build_train_transform(aug: AugConfig, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Pad + random crop, flip, affine, colour, Normalize, then cutout (filled with 0 = the mean)."""
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
    t.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    # After Normalize, fill 0 is the per-channel mean: the hole carries no colour information.
    t.append(A.CoarseDropout(num_holes_range=(1, 1),
                             hole_height_range=(aug.cutout_min, aug.cutout_max),
                             hole_width_range=(aug.cutout_min, aug.cutout_max),
                             fill=0.0, p=aug.cutout_p))
    # Transforms with p=0 are dropped: they would only cost a random draw per image.
    return A.Compose([x for x in t if x.p > 0], seed=0)


def build_test_transform(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Evaluation: Normalize only."""
    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)], seed=0)
