"""Image grids for ``media/``: rows of frames tiled into one PNG a person can read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange


def image_grid(rows: Sequence[torch.Tensor], scale: int = 4, gap: int = 2) -> np.ndarray:
    """Tile ``rows`` (each ``[N, C, H, W]`` in [0, 1], C in {1, 3}) into ``[H', W', 3]`` uint8.

    Each row is one line of the grid; pixels are enlarged ``scale`` times (nearest)
    and separated by ``gap`` pixels of mid gray.
    """
    if not rows:
        raise ValueError("image_grid needs at least one row.")
    count = max(row.shape[0] for row in rows)
    tiles = []
    for row in rows:
        row = row.detach().float().clamp(0, 1).cpu()
        if row.shape[1] == 1:
            row = row.expand(-1, 3, -1, -1)
        if row.shape[0] < count:
            row = torch.cat([row, row.new_zeros(count - row.shape[0], *row.shape[1:])])
        tiles.append(row)
    grid = torch.stack(tiles)  # [R, N, 3, H, W]
    grid = grid.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    grid = torch.nn.functional.pad(grid, (gap, gap, gap, gap), value=0.5)
    image = rearrange(grid, "r n c h w -> (r h) (n w) c")
    return (image.numpy() * 255).round().astype(np.uint8)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an ``[H, W, 3]`` uint8 array as PNG, creating parent folders."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    return path


Colour = tuple[float, float, float]


def annotate_grid(
    grid: np.ndarray,
    row_labels: Sequence[str],
    *,
    title: str | None = None,
    legend: Sequence[tuple[str, Colour]] = (),
    divider: tuple[int, int, range] | None = None,
) -> np.ndarray:
    """``grid`` (from :func:`image_grid`, rows of equal height) with a label left of
    each row, an optional title above, a legend of coloured squares below and, for
    ``divider = (column, columns, rows)``, a white line before ``column`` of the
    ``columns`` equal columns across the grid rows in ``rows`` (e.g. where the given
    context ends and imagination begins).

    Returns a new ``[H', W', 3]`` uint8 image; the frames themselves are unchanged.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    rows = len(row_labels)
    if rows == 0 or grid.shape[0] % rows:
        raise ValueError(f"{rows} row labels do not divide a grid {grid.shape[0]} pixels high.")
    row_height, line = grid.shape[0] // rows, 14
    margin = 8 + max(int(font.getlength(text)) for text in row_labels)
    top = line + 4 if title else 4
    bottom = line + 8 if legend else 4
    canvas = Image.new("RGB", (margin + grid.shape[1] + 4, top + grid.shape[0] + bottom), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (margin, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    for index, text in enumerate(row_labels):
        draw.text((4, top + index * row_height + row_height // 2 - 5), text, fill=(0, 0, 0), font=font)
    if divider is not None:
        column, columns, span = divider
        x = margin + round(column * grid.shape[1] / columns)
        draw.line([(x, top + span.start * row_height), (x, top + span.stop * row_height - 1)],
                  fill=(255, 255, 255), width=2)
    x, y = margin, top + grid.shape[0] + 4
    for text, colour in legend:
        rgb = tuple(int(round(255 * v)) for v in colour)
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 13, y), text, fill=(0, 0, 0), font=font)
        x += 13 + int(font.getlength(text)) + 14
    return np.asarray(canvas)


def cameras_side_by_side(videos: torch.Tensor) -> torch.Tensor:
    """``[..., H, W, 3k]`` (``k`` RGB images stacked on channels) -> ``[..., H, k W, 3]``;
    1- and 3-channel frames unchanged."""
    channels = videos.shape[-1]
    if channels in (1, 3) or channels % 3:
        return videos
    parts = videos.split(3, dim=-1)
    return torch.cat(parts, dim=-2)


def openloop_frames(truth: torch.Tensor, prediction: torch.Tensor, error: torch.Tensor | None,
                    context: int, scale: int = 2, bar: int = 3) -> np.ndarray:
    """uint8 ``[B, T, H, W, C]`` videos -> ``[T, H', W', 3]`` uint8 frames (rows truth,
    prediction, error; columns the ``B`` sequences; a green bar over the ``context``
    frames the model saw, red over those it predicted). ``error`` defaults to
    ``(prediction - truth + 255) / 2``. Frames of ``3k`` channels (``k`` RGB cameras stacked,
    :class:`~worldmodels.data.obs_transform.ObsTransform`) show the cameras side by side."""
    if error is None:
        error = ((prediction.float() - truth.float() + 255.0) / 2.0).round().to(torch.uint8)
    truth, prediction, error = (cameras_side_by_side(v) for v in (truth, prediction, error))
    as_unit = [(v.detach().cpu().float() / 255.0).permute(1, 0, 4, 2, 3) for v in (truth, prediction, error)]
    frames = []
    for t in range(as_unit[0].shape[0]):
        grid = image_grid([v[t] for v in as_unit], scale=scale)
        colour = np.array([0, 200, 0] if t < context else [220, 0, 0], np.uint8)
        top = np.broadcast_to(colour, (bar, grid.shape[1], 3))
        frames.append(np.concatenate([top, grid], 0))
    return np.stack(frames)


def write_gif(path: str | Path, frames: np.ndarray, duration: int = 120) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames as a looping GIF (``duration`` ms per frame)."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, duration=duration, loop=0)
    return path


def side_by_side_frames(truth: torch.Tensor, prediction: torch.Tensor, context: int, scale: int = 3,
                        bar: int = 3) -> np.ndarray:
    """``[B, T, C, H, W]`` videos in [0, 1] -> ``[T, H', W', 3]`` uint8 frames: one row per
    sequence, the truth on the left and the prediction on the right, a green bar over the
    ``context`` frames the model was given, red over those it predicted. ``H'`` and ``W'``
    are even (what H.264's 4:2:0 encoding needs)."""
    if truth.shape != prediction.shape or truth.dim() != 5:
        raise ValueError(f"truth and prediction must both be [B, T, C, H, W], got {tuple(truth.shape)} and "
                         f"{tuple(prediction.shape)}.")
    frames = []
    for t in range(truth.shape[1]):
        grid = image_grid([torch.stack([truth[b, t], prediction[b, t]]) for b in range(truth.shape[0])], scale=scale)
        colour = np.array([0, 200, 0] if t < context else [220, 0, 0], np.uint8)
        frames.append(np.concatenate([np.broadcast_to(colour, (bar, grid.shape[1], 3)), grid], 0))
    video = np.stack(frames)
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    return np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=128)


def ffmpeg_available() -> bool:
    """Whether imageio can write MP4 (the ``imageio-ffmpeg`` package and its binary)."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        return False


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames (even ``H`` and ``W``) as an H.264 MP4 through
    imageio-ffmpeg; lossless-looking quality (CRF-like ``quality=9``) and no resizing."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=9,
                            macro_block_size=1, pixelformat="yuv420p") as writer:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    return path


def write_videos(stem: str | Path, frames: np.ndarray, fps: int = 8) -> list[Path]:
    """``stem.gif`` and, when ffmpeg is there, ``stem.mp4``; without it one warning line on
    stderr says how to get MP4 and only the GIF is written."""
    import sys

    stem = Path(stem)
    written = [write_gif(stem.with_suffix(".gif"), frames, duration=round(1000 / fps))]
    if ffmpeg_available():
        written.append(write_mp4(stem.with_suffix(".mp4"), frames, fps))
    else:
        print(f"warning: no MP4 for {stem.name}: imageio-ffmpeg is missing (pip install imageio-ffmpeg); wrote "
              "the GIF only.", file=sys.stderr)
    return written
