"""DINO multi-crop augmentation, batched on the training device.

Every image gets its own random parameters (as torchvision draws them per call), but each op
runs once on the whole batch, so the GPU path never loops over images in Python:
RandomResizedCrop through ``torchvision.ops.roi_align`` (adaptive sampling averages the
samples of a bin, i.e. an antialiased resize), then flip, colour jitter (the four ops in a
random order per image), grayscale, Gaussian blur and solarisation with torchvision's formulas.
Images of different sizes arrive zero-padded with their true sizes; crops stay inside them.

Per DINO: global crop 1 blurs always, global crop 2 blurs with p 0.1 and solarises with p 0.2,
local crops blur with p 0.5. Blur sigmas (0.1-2 px at 224 px) are scaled by global_size/224.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from bench_protosim.shard import Shard, uniform
from torchvision.ops import roi_align

_GRAY = (0.2989, 0.587, 0.114)


def random_resized_crop_boxes(sizes: torch.Tensor, scale: tuple[float, float],
                              ratio: tuple[float, float] = (3 / 4, 4 / 3),
                              attempts: int = 10, shard: Shard | None = None) -> torch.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for every image at once.

    sizes: (B, 2) heights, widths. Returns (B, 4) boxes x1, y1, x2, y2 in pixel-edge coordinates.
    ``shard``: the images are rows of a global batch; draws are made for all of it (shard.py).
    """
    device = sizes.device
    b = sizes.shape[0]
    h_img = sizes[:, 0:1].double()
    w_img = sizes[:, 1:2].double()
    area = h_img * w_img
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    f64 = {"device": device, "dtype": torch.float64}
    target = area * uniform(shard, b, attempts, low=scale[0], high=scale[1], **f64)
    aspect = torch.exp(uniform(shard, b, attempts, low=log_r[0], high=log_r[1], **f64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= w_img) & (h > 0) & (h <= h_img)
    first = torch.where(ok.any(1), ok.double().argmax(1), torch.zeros(b, dtype=torch.long, device=device))
    rows = torch.arange(b, device=device)
    h_sel, w_sel = h[rows, first], w[rows, first]
    # fallback: the central crop of the allowed aspect ratio (torchvision's rule)
    hh, ww = h_img[:, 0], w_img[:, 0]
    in_ratio = ww / hh
    fb_w = torch.where(in_ratio > ratio[1], torch.round(hh * ratio[1]), ww)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(ww / ratio[0]), hh)
    found = ok.any(1)
    h_sel = torch.where(found, h_sel, fb_h)
    w_sel = torch.where(found, w_sel, fb_w)
    u = uniform(shard, b, 2, **f64)
    top = torch.where(found, torch.floor(u[:, 0] * (hh - h_sel + 1)), torch.floor((hh - h_sel) / 2))
    left = torch.where(found, torch.floor(u[:, 1] * (ww - w_sel + 1)), torch.floor((ww - w_sel) / 2))
    return torch.stack([left, top, left + w_sel, top + h_sel], dim=1).float()


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int,
                sampling_ratio: int = -1) -> torch.Tensor:
    """Crop ``boxes`` (B, 4) from float images (B, C, H, W) and resize to size×size (bilinear)."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1)
    return roi_align(images, rois.to(images.dtype), output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _per_image(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(f)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    f = _per_image(f)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_image(f)
    return (f * x + (1 - f) * grayscale(x)).clamp(0, 1)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's formula (transforms/v2/functional/_color.py)."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - image) / divisor).unbind(dim=-3)
    neq_r = maxc != r
    eq_g = maxc == g
    hg = (rc + 2.0 - bc) * (eq_g & neq_r)
    hr = (bc - gc) * (~neq_r)
    hb = (gc + 4.0 - rc) * (neq_r & ~eq_g)
    h = ((hr + hg + hb) / 6.0 + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """HSV → RGB by the closed form c_n = v - v·s·clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6."""
    h, s, v = img.unbind(dim=-3)
    n = torch.tensor([5.0, 3.0, 1.0], device=img.device, dtype=img.dtype).view(3, 1, 1)
    k = (n + 6.0 * h.unsqueeze(-3)).remainder(6.0)
    return v.unsqueeze(-3) - (v * s).unsqueeze(-3) * torch.minimum(k, 4.0 - k).clamp(0, 1)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    h, s, v = hsv.unbind(-3)
    h = (h + f.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, reflect padding (torchvision's kernel)."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (pos[None, :] / sigma[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)                               # (B, k)
    weight = k.repeat_interleave(c, dim=0)                        # (B·C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weight[:, None, None, :], groups=b * c)
    y = F.conv2d(y, weight[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


@dataclass
class MultiCrop:
    """DINO's ``DataAugmentationDINO`` as a batched tensor op."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    p_jitter: float = 0.8
    p_gray: float = 0.2

    def _view(self, x: torch.Tensor, sizes: torch.Tensor, size: int, scale: tuple[float, float],
              p_blur: float, p_solarize: float, shard: Shard | None) -> torch.Tensor:
        b = x.shape[0]
        dev = x.device
        out = crop_resize(x, random_resized_crop_boxes(sizes, scale, shard=shard), size)
        flip = uniform(shard, b, device=dev) < 0.5
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        out = self._jitter(out, shard)
        gray = uniform(shard, b, device=dev) < self.p_gray
        out = torch.where(gray.view(-1, 1, 1, 1), grayscale(out).expand_as(out), out)
        blur = uniform(shard, b, device=dev) < p_blur
        if p_blur > 0:
            s = self.global_size / 224.0
            sigma = uniform(shard, b, low=0.1 * s, high=2.0 * s, device=dev)
            ksize = min(2 * math.ceil(3 * 2.0 * s) + 1, 2 * ((size - 1) // 2) + 1)
            out = torch.where(blur.view(-1, 1, 1, 1), gaussian_blur(out, sigma, ksize), out)
        if p_solarize > 0:
            sol = uniform(shard, b, device=dev) < p_solarize
            out = torch.where(sol.view(-1, 1, 1, 1) & (out >= 128 / 255), 1.0 - out, out)
        mean = torch.tensor(self.mean, device=dev, dtype=out.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=dev, dtype=out.dtype).view(1, 3, 1, 1)
        return (out - mean) / std

    def _jitter(self, x: torch.Tensor, shard: Shard | None) -> torch.Tensor:
        """ColorJitter with p_jitter: brightness, contrast, saturation, hue in a random order per image."""
        b = x.shape[0]
        dev = x.device
        br, co, sa, hu = self.jitter
        factors = torch.stack([uniform(shard, b, low=1 - br, high=1 + br, device=dev),
                               uniform(shard, b, low=1 - co, high=1 + co, device=dev),
                               uniform(shard, b, low=1 - sa, high=1 + sa, device=dev),
                               uniform(shard, b, low=-hu, high=hu, device=dev)], 1)
        order = uniform(shard, b, 4, device=dev).argsort(1)
        apply = uniform(shard, b, device=dev) < self.p_jitter
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        y = x.clone()
        for step in range(4):
            for j, op in enumerate(ops):
                rows = torch.nonzero(apply & (order[:, step] == j)).squeeze(1)
                y[rows] = op(y[rows], factors[rows, j])
        return y

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor | None = None,
                 shard: Shard | None = None) -> list[torch.Tensor]:
        """uint8 (B, H, W, 3) (zero-padded; ``sizes`` (B, 2) true H, W) → [2 global, n_local local].

        ``shard``: the images are this rank's rows of a global batch; each image gets the random
        parameters it would get in the single-process run of that batch.
        """
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if sizes is None:
            sizes = torch.tensor([x.shape[-2], x.shape[-1]], device=x.device).expand(x.shape[0], 2)
        sizes = sizes.to(x.device)
        crops = [self._view(x, sizes, self.global_size, self.global_scale, 1.0, 0.0, shard),
                 self._view(x, sizes, self.global_size, self.global_scale, 0.1, 0.2, shard)]
        crops += [self._view(x, sizes, self.local_size, self.local_scale, 0.5, 0.0, shard)
                  for _ in range(self.n_local)]
        return crops
