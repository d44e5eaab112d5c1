"""A procedurally generated, class-labelled image set: ten kinds of shapes and textures, 32×32 RGB, any number.

Richer than 8×8 digits and made on the spot (no download): every image draws its own position, size, rotation,
colours, edge softness and sensor noise, so a generative model must learn shape, not memorise pixels. The classes:

    0 disc   1 ring   2 square   3 triangle   4 cross   5 bar   6 two discs   7 stripes   8 checkerboard   9 dots

Shapes are drawn from signed distances (soft edges: a sigmoid of the distance in pixels), textures from sines of
rotated coordinates. `make_shapes(n, seed)` is deterministic in its seed, balanced over the classes, and returns
images in [-1, 1].
"""

from __future__ import annotations

import math

import torch

CLASSES = ("disc", "ring", "square", "triangle", "cross", "bar", "two discs", "stripes", "checkerboard", "dots")
SIZE = 32


def make_shapes(
    n: int, seed: int, size: int = SIZE, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, size, size) in [-1, 1], labels (n,)) on `device`: class i at positions i, i + 10, ...
    (balanced). The same seed gives the same images on one kind of device (CPU and CUDA draw differently)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=g, device=device)

    labels = torch.arange(n, device=device) % len(CLASSES)
    axis = torch.linspace(-1, 1, size, device=device)
    y, x = axis[None, :, None], axis[None, None, :]  # (1, size, 1), (1, 1, size)
    cx, cy = uniform(-0.35, 0.35)[:, None, None], uniform(-0.35, 0.35)[:, None, None]
    radius = uniform(0.3, 0.55)[:, None, None]
    angle = uniform(0, 2 * math.pi)[:, None, None]
    cos, sin = angle.cos(), angle.sin()
    u, v = cos * (x - cx) + sin * (y - cy), -sin * (x - cx) + cos * (y - cy)  # coordinates of the shape's frame
    pixel = 2 / size
    distance = {  # signed distance to each class's outline, in image units (negative inside)
        0: (u.square() + v.square()).sqrt() - radius,
        1: ((u.square() + v.square()).sqrt() - 0.75 * radius).abs() - 0.25 * radius,
        2: torch.maximum(u.abs(), v.abs()) - 0.8 * radius,
        3: _triangle(u, v, radius),
        4: torch.minimum(torch.maximum(u.abs() - radius, v.abs() - 0.3 * radius),
                         torch.maximum(v.abs() - radius, u.abs() - 0.3 * radius)),
        5: torch.maximum(u.abs() - 1.2 * radius, v.abs() - 0.25 * radius),
        6: torch.minimum(((u - 0.5 * radius).square() + v.square()).sqrt(),
                         ((u + 0.5 * radius).square() + v.square()).sqrt()) - 0.4 * radius,
    }  # fmt: skip
    frequency = uniform(3, 6)[:, None, None] * math.pi
    pattern = {  # textures over the whole image, as a distance-like field whose sign alternates
        7: torch.sin(frequency * u) * pixel * 4,
        8: torch.sin(frequency * u) * torch.sin(frequency * v) * pixel * 8,
        9: (0.75 - (torch.sin(frequency * u / 2) * torch.sin(frequency * v / 2)).abs().sqrt()) * pixel * 4,
    }  # fmt: skip
    field = torch.zeros(n, size, size, device=device)
    for label, value in {**distance, **pattern}.items():
        chosen = labels == label
        field[chosen] = value.expand(n, size, size)[chosen]
    softness = uniform(0.5, 1.5)[:, None, None] * pixel
    mask = torch.sigmoid(-field / softness)[:, None]  # (n, 1, size, size): 1 inside
    foreground, background = _contrasting_colours(n, g, device)
    images = mask * foreground[:, :, None, None] + (1 - mask) * background[:, :, None, None]
    images = images + 0.04 * torch.randn(images.shape, generator=g, device=device)
    return images.clamp(-1, 1), labels


def _triangle(u: torch.Tensor, v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Signed distance (up to scale) to an equilateral triangle inscribed in `radius`: the largest of its three
    half-planes."""
    edges = []
    for k in range(3):
        theta = math.pi / 2 + 2 * math.pi * k / 3
        edges.append(u * math.cos(theta) + v * math.sin(theta) - 0.5 * radius)
    return torch.stack(edges).amax(0)


def _contrasting_colours(n: int, g: torch.Generator, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background RGB in [-1, 1], at least 0.8 apart (L2): a shape must stay visible."""
    foreground = torch.rand(n, 3, generator=g, device=device) * 2 - 1
    background = torch.rand(n, 3, generator=g, device=device) * 2 - 1
    for _ in range(20):  # redraw the backgrounds too close to their foregrounds; 20 rounds leave none in practice
        close = (foreground - background).norm(dim=1) < 0.8
        if not close.any():
            break
        background[close] = torch.rand(int(close.sum()), 3, generator=g, device=device) * 2 - 1
    close = (foreground - background).norm(dim=1) < 0.8
    background[close] = -foreground[close].sign()  # the opposite corner: as far as the cube allows
    return foreground, background
