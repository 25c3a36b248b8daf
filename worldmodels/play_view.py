"""Showing and recording the frames of ``python -m worldmodels.play``.

A :class:`Screen` sends every frame it is given (uint8 ``[H, W, C]``) to a viewer and,
with ``--record``, to a :class:`Recorder`. Viewers: :class:`PygameViewer` (a window,
used when pygame imports and ``DISPLAY``/``WAYLAND_DISPLAY`` is set),
:class:`TerminalViewer` (a coarse ANSI/ASCII rendering printed per frame) and
:class:`Viewer` (shows nothing). The recorder enlarges frames by ``scale`` (nearest
neighbour), adds a thin time strip under each frame (a marker that moves one step per
frame, so consecutive frames always differ and a GIF keeps every one of them) and
writes a GIF (imageio + Pillow) or an MP4 (imageio's ffmpeg plugin or PyAV).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from .errors import WorldModelsError

GAP_GRAY = 128
ASCII_RAMP = " .:-=+*#%@"
RECORD_SUFFIXES = (".gif", ".mp4")


class PlayError(WorldModelsError, RuntimeError):
    """A bad argument or input of ``python -m worldmodels.play``; main prints it on one line."""


class StopPlay(Exception):
    """The person closed the window: stop the current mode (the recording is still written)."""


def rgb(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> ``[H, W, 3]``."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge ``[H, W, C]`` ``scale`` times by nearest neighbour."""
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def side_by_side(images: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """Place uint8 images left to right (RGB, bottom-padded to one height) with
    ``gap`` columns of mid gray between them."""
    images = [rgb(image) for image in images]
    height = max(image.shape[0] for image in images)
    parts: list[np.ndarray] = []
    for image in images:
        if parts:
            parts.append(np.full((height, gap, 3), GAP_GRAY, np.uint8))
        pad = height - image.shape[0]
        parts.append(np.pad(image, ((0, pad), (0, 0), (0, 0))) if pad else image)
    return np.concatenate(parts, axis=1)


def _sample(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour resample of ``[H, W, 3]`` to ``[rows, cols, 3]`` (int)."""
    r = np.arange(rows) * image.shape[0] // rows
    c = np.arange(cols) * image.shape[1] // cols
    return image[r][:, c].astype(np.int64)


def ansi_frame(image: np.ndarray, width: int = 32, color: bool = True) -> str:
    """A coarse text rendering of uint8 ``[H, W, C]``, at most ``width`` characters wide.

    ``color``: 24-bit ANSI half blocks (two pixels per character); otherwise an ASCII
    brightness ramp (one character per two pixel rows, no escape codes).
    """
    image = rgb(image)
    height, wide = image.shape[:2]
    cols = max(1, min(width, wide))
    if color:
        rows = max(2, 2 * round(height * cols / wide / 2))
        pixels = _sample(image, rows, cols)
        lines = []
        for top, bottom in zip(pixels[0::2], pixels[1::2]):
            cells = [f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580" for t, b in zip(top, bottom)]
            lines.append("".join(cells) + "\x1b[0m")
        return "\n".join(lines)
    rows = max(1, round(height * cols / wide / 2))
    luma = _sample(image, rows, cols) @ np.array([299, 587, 114]) // 1000
    ramp = np.array(list(ASCII_RAMP))
    return "\n".join("".join(ramp[row * len(ASCII_RAMP) // 256]) for row in luma)


def display_available() -> bool:
    """Whether a window can open: pygame imports and ``DISPLAY`` or ``WAYLAND_DISPLAY`` is set."""
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return has_display and importlib.util.find_spec("pygame") is not None


class Viewer:
    """Shows nothing (headless runs of the agent modes and of episode replay)."""

    window = False

    def show(self, frame: np.ndarray, caption: str) -> None:
        """Display ``frame`` (uint8 ``[H, W, 3]``) with a one-line ``caption``."""

    def close(self) -> None:
        """Release the display."""


class TerminalViewer(Viewer):
    """Prints each frame as text (:func:`ansi_frame`; colour when ``out`` is a terminal
    and ``NO_COLOR`` is unset) followed by its caption."""

    def __init__(self, out: TextIO | None = None, width: int = 32, color: bool | None = None):
        self.out = out or sys.stdout
        self.width = width
        if color is None:
            color = bool(getattr(self.out, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ
        self.color = color

    def show(self, frame: np.ndarray, caption: str) -> None:
        print(ansi_frame(frame, self.width, self.color), file=self.out)
        print(caption, file=self.out, flush=True)


class PygameViewer(Viewer):
    """A pygame window that shows frames ``scale`` times enlarged, at most ``fps`` per
    second; :meth:`read_command` waits for a key (digits, ``r``, ``q``/Escape)."""

    window = True

    def __init__(self, fps: float, scale: int):
        import pygame

        self.pygame, self.fps, self.scale = pygame, fps, scale
        pygame.display.init()
        self.clock = pygame.time.Clock()
        self.surface = None

    def show(self, frame: np.ndarray, caption: str) -> None:
        pg = self.pygame
        frame = upscale(rgb(frame), self.scale)
        size = (frame.shape[1], frame.shape[0])
        if self.surface is None or self.surface.get_size() != size:
            self.surface = pg.display.set_mode(size)
        pg.display.set_caption(caption)
        self.surface.blit(pg.surfarray.make_surface(frame.transpose(1, 0, 2)), (0, 0))
        pg.display.flip()
        if any(event.type == pg.QUIT for event in pg.event.get()):
            raise StopPlay
        self.clock.tick(self.fps)

    def read_command(self, prompt: str) -> str:
        """The next key as a command: ``"0"`` .. ``"9"``, ``"r"`` or ``"q"`` (also Escape
        and closing the window)."""
        pg = self.pygame
        while True:
            event = pg.event.wait()
            if event.type == pg.QUIT:
                return "q"
            if event.type != pg.KEYDOWN:
                continue
            if event.key == pg.K_ESCAPE:
                return "q"
            if event.unicode and event.unicode.lower() in "0123456789rq":
                return event.unicode.lower()

    def close(self) -> None:
        self.pygame.quit()


class Recorder:
    """Collects the shown frames and writes them to ``path`` (``.gif`` or ``.mp4``) at
    ``fps``, enlarged ``scale`` times, on :meth:`close`."""

    def __init__(self, path: str | os.PathLike, fps: float, scale: int):
        self.path, self.fps, self.scale = Path(path), float(fps), int(scale)
        suffix = self.path.suffix.lower()
        if suffix not in RECORD_SUFFIXES:
            raise PlayError(f"--record {self.path}: the file must end in .gif or .mp4.")
        self.plugin = mp4_plugin() if suffix == ".mp4" else None
        self.frames: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(rgb(frame).copy())

    def video(self) -> np.ndarray:
        """The frames as uint8 ``[T, H', W', 3]``: padded to one size, enlarged, with the
        time strip (``scale`` rows, at least 2) below each."""
        height = max(f.shape[0] for f in self.frames)
        width = max(f.shape[1] for f in self.frames)
        strip = max(2, self.scale)
        out = []
        for t, frame in enumerate(self.frames):
            frame = np.pad(frame, ((0, height - frame.shape[0]), (0, width - frame.shape[1]), (0, 0)))
            big = upscale(frame, self.scale)
            bar = np.zeros((strip, big.shape[1], 3), np.uint8)
            cells = max(2, big.shape[1] // strip)
            start = (t % cells) * strip
            bar[:, start:start + strip] = 255
            out.append(np.concatenate([big, bar], axis=0))
        return np.stack(out)

    def close(self) -> Path | None:
        """Write the file (parent folders created); None when no frame was shown."""
        if not self.frames:
            return None
        import imageio.v3 as iio

        video = self.video()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.plugin is None:
            iio.imwrite(self.path, video, duration=1000.0 / self.fps, loop=0)
        else:
            video = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)))
            iio.imwrite(self.path, video, **self.plugin, fps=max(1, round(self.fps)))
        return self.path


def mp4_plugin() -> dict:
    """imageio arguments for MP4: the ffmpeg plugin (imageio-ffmpeg) or PyAV; raises
    :class:`PlayError` suggesting ``.gif`` when neither is installed."""
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return {"plugin": "FFMPEG", "macro_block_size": 2}
    if importlib.util.find_spec("av") is not None:
        return {"plugin": "pyav", "codec": "libx264"}
    raise PlayError("writing .mp4 needs imageio's ffmpeg plugin (pip install imageio-ffmpeg) or PyAV "
                    "(pip install av); record to a .gif instead (--record out.gif).")


class Screen:
    """Where a mode sends its frames: the viewer and, when recording, the recorder."""

    def __init__(self, viewer: Viewer, recorder: Recorder | None = None):
        self.viewer, self.recorder = viewer, recorder

    def show(self, frame: np.ndarray, caption: str) -> None:
        frame = rgb(frame)
        if self.recorder is not None:
            self.recorder.add(frame)
        self.viewer.show(frame, caption)

    def close(self) -> Path | None:
        """Close the viewer and write the recording (its path, or None)."""
        self.viewer.close()
        return None if self.recorder is None else self.recorder.close()


__all__ = ["PlayError", "PygameViewer", "Recorder", "Screen", "StopPlay", "TerminalViewer", "Viewer",
           "ansi_frame", "display_available", "mp4_plugin", "rgb", "side_by_side", "upscale"]
