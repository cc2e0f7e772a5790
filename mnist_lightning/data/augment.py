"""Data augmentation on the device, per batch, each image with its own random draw.

torchvision's v2 transforms draw one set of parameters per call, i.e. the same rotation for a
whole batch; here every image gets its own affine transform (rotation, scale, shear,
translation) and, optionally, its own elastic distortion (Simard et al., 2003), all in one
`grid_sample` over the batch. Runs on images in [0, 1], before normalisation, so that the
border filled in is black like MNIST's background.

Elastic fields are Simard's (uniform noise smoothed by a Gaussian of `elastic_sigma`, scaled by
`elastic_alpha`), but blurring a fresh field per image costs more than the training step on a
CPU; so a bank of `elastic_bank` fields is made once on the device, and each image draws one
at random, with a random flip of each axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur


class BatchAugment(nn.Module):
    """Per-image random affine transforms and elastic distortions of a batch, on its device:
    rotations up to `degrees`, shifts up to `translate` of the size, zooms within `scale`
    [low, high], shears up to `shear` degrees, left-right mirror images with probability
    `mirror` (fair for clothes, not for digits), and Simard's distortions of strength
    `elastic_alpha` (0: none) from a bank of `elastic_bank` fields."""

    def __init__(
        self,
        degrees: float = 10.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.9, 1.1),
        shear: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
        elastic_bank: int = 4096,
        mirror: float = 0.0,
    ) -> None:
        super().__init__()
        self.degrees, self.translate, self.shear, self.mirror = degrees, translate, shear, mirror
        self.scale = tuple(scale)
        self.elastic_alpha, self.elastic_sigma, self.elastic_bank = (
            elastic_alpha,
            elastic_sigma,
            elastic_bank,
        )
        self.fields: torch.Tensor | None = None  # [bank, H, W, 2] in grid units, made on first use
        # Drawn from the run's generator when the bank is first made, and kept in checkpoints
        # (the DataModule's state): a resumed run makes the same bank without drawing again.
        self.bank_seed: int | None = None

    def _make_fields(self, height: int, width: int, device) -> torch.Tensor:
        if self.bank_seed is None:
            self.bank_seed = int(torch.randint(0, 2**31, (1,)).item())
        generator = torch.Generator(device=device).manual_seed(self.bank_seed)
        noise = torch.empty(self.elastic_bank, 2, height, width, device=device).uniform_(
            -1, 1, generator=generator
        )
        kernel = int(4 * self.elastic_sigma) | 1  # odd
        fields = (
            gaussian_blur(noise, [kernel, kernel], [self.elastic_sigma] * 2) * self.elastic_alpha
        )
        # pixels -> grid units (the grid spans 2 over the image's size)
        fields = fields * torch.tensor([2 / width, 2 / height], device=device).view(1, 2, 1, 1)
        return fields.permute(0, 2, 3, 1).contiguous()

    def _uniform(self, n: int, low: float, high: float, device) -> torch.Tensor:
        return torch.empty(n, device=device).uniform_(low, high)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        device = images.device
        angle = self._uniform(n, -self.degrees, self.degrees, device) * (math.pi / 180)
        shear = self._uniform(n, -self.shear, self.shear, device) * (math.pi / 180)
        scale = self._uniform(n, *self.scale, device)
        # affine_grid works in [-1, 1]: a shift of `translate` of the width is 2 * translate.
        shift = self._uniform(2 * n, -2 * self.translate, 2 * self.translate, device).view(n, 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack(
                    [cos / scale, (-sin + torch.tan(shear) * cos) / scale, shift[:, 0]], dim=1
                ),
                torch.stack([sin / scale, cos / scale, shift[:, 1]], dim=1),
            ],
            dim=1,
        )
        if self.mirror > 0:  # (drawn only then: the other augmentations' draws stay as they were)
            mirrored = torch.rand(n, device=device) < self.mirror
            theta[:, :, 0] *= 1 - 2 * mirrored.to(theta.dtype)[:, None]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if self.elastic_alpha > 0:
            if (
                self.fields is None
                or self.fields.device != device
                or self.fields.shape[1:3] != (height, width)
            ):
                self.fields = self._make_fields(height, width, device)
            pick = torch.randint(0, len(self.fields), (n,), device=device)
            flips = torch.randint(0, 2, (n, 1, 1, 2), device=device) * 2 - 1  # per image, per axis
            grid = grid + self.fields[pick] * flips
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
