"""Pictures of what VTA learned: ``vis_seq_<idx>.png`` and ``jumpy_<idx>.png``.

``vis_seq`` rows, each labelled in the picture: the ground-truth window (a green bar
over frames with a true event), the reconstruction (a red bar over the posterior's
boundaries, yellow where a boundary meets an event), then prior samples that continue
from the first quarter of the window (a white line where the given context ends; red
bars at sampled boundaries). A legend under the frames names the colours.
``jumpy`` rows: abstract-level rollouts after the same context, one frame per
imagined segment.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...utils.images import annotate_grid, image_grid, save_png

Tensor = torch.Tensor
GREEN = (0.1, 0.9, 0.2)
RED = (1.0, 0.15, 0.1)
YELLOW = (1.0, 0.85, 0.1)
BAR = 2
LEGEND = (("true event", GREEN), ("boundary", RED), ("both", YELLOW), ("| end of context", (1.0, 1.0, 1.0)))


def with_bars(frames: Tensor, predicted: Tensor | None = None, truth: Tensor | None = None) -> Tensor:
    """RGB frames ``[N, 3, BAR + H, W]`` with a bar above each frame: red at predicted
    boundaries, green at true events, yellow where both, black elsewhere."""
    frames = frames.float().cpu()
    if frames.shape[1] == 1:
        frames = frames.expand(-1, 3, -1, -1)
    count = frames.shape[0]
    predicted = torch.zeros(count, dtype=torch.bool) if predicted is None else predicted.bool().cpu()
    truth = torch.zeros(count, dtype=torch.bool) if truth is None else truth.bool().cpu()
    palette = torch.tensor([(0.0, 0.0, 0.0), RED, GREEN, YELLOW])
    colour = palette[predicted.long() + 2 * truth.long()]  # [N, 3]
    bar = colour.view(count, 3, 1, 1).expand(count, 3, BAR, frames.shape[-1])
    return torch.cat([bar, frames], dim=2)


@torch.no_grad()
def vta_rows(model, held_out: dict[str, Tensor], index: int, num_samples: int) -> tuple[list[Tensor], list[Tensor]]:
    """The rows of ``vis_seq`` and ``jumpy`` for held-out sequence ``index``."""
    c = model.config
    was_training = model.training
    model.eval()
    frames = held_out["frames"][index : index + 1]
    actions = held_out.get("actions")
    actions = frames.new_zeros(1, frames.shape[1], c.action_size) if actions is None else actions[index : index + 1]
    window = slice(c.init_size, c.init_size + c.seq_size)
    truth = held_out["events"][index : index + 1, window]
    out = model(frames, actions, c.seq_size, c.init_size, c.obs_std, c.loss_type,
                events=held_out["events"][index : index + 1])
    vis = [with_bars(frames[0, window], truth=truth[0]),
           with_bars(out.reconstruction[0], out.mask[0] > 0.5, truth[0])]
    context = max(1, c.seq_size // 4)
    embed = model.embed(_inputs(model, frames))
    jumpy = []
    for _ in range(num_samples):
        feat, mask = model.hrssm.imagine(embed, actions, c.init_size, context, c.seq_size - context, model.mask_beta())
        vis.append(with_bars(model.to_image(model.decode(feat))[0], mask[0] > 0.5))
        segments = model.hrssm.jumpy_imagine(embed, actions, c.init_size, context, c.seg_num, model.mask_beta())
        jumpy.append(model.to_image(model.decode(segments))[0])
    model.train(was_training)
    return vis, jumpy


def _inputs(model, frames: Tensor) -> Tensor:
    from .model import quantize

    return quantize(frames, model.config.obs_bit, dequantize=False)


def save_visualization(model, held_out: dict[str, Tensor], directory: Path, index: int = 0,
                       step: int | None = None, num_samples: int = 3) -> Path:
    """Write ``vis_seq_<index>.png`` and ``jumpy_<index>.png`` (with ``_step<N>`` when
    ``step`` is given) into ``directory``; returns the ``vis_seq`` path."""
    vis, jumpy = vta_rows(model, held_out, index, num_samples)
    suffix = "" if step is None else f"_step{step:06d}"
    at_step = "" if step is None else f", training step {step}"
    context = max(1, model.config.seq_size // 4)
    samples = [f"prior sample {k + 1}" for k in range(num_samples)]
    vis_image = annotate_grid(
        image_grid(vis), ["truth", "reconstruction", *samples],
        title=f"held-out sequence {index}{at_step}: frames {model.config.init_size}.."
              f"{model.config.init_size + model.config.seq_size - 1}",
        legend=LEGEND, divider=(context, vis[0].shape[0], range(2, 2 + num_samples)))
    jumpy_image = annotate_grid(
        image_grid(jumpy), [f"jumpy sample {k + 1}" for k in range(num_samples)],
        title=f"jumpy imagination after {context} context frames: one frame per imagined segment{at_step}")
    save_png(Path(directory) / f"jumpy_{index}{suffix}.png", jumpy_image)
    return save_png(Path(directory) / f"vis_seq_{index}{suffix}.png", vis_image)
