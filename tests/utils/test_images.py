import imageio.v3 as iio
import numpy as np
import pytest
import torch

from worldmodels.utils.images import image_grid, save_png


def test_grid_layout_and_values(tmp_path):
    white = torch.ones(2, 1, 4, 4)
    black = torch.zeros(3, 3, 4, 4)
    grid = image_grid([white, black], scale=2, gap=1)
    tile = 4 * 2 + 2
    assert grid.shape == (2 * tile, 3 * tile, 3) and grid.dtype == np.uint8
    assert (grid[1:9, 1:9] == 255).all()          # first tile of the white row
    assert (grid[1:9, 2 * tile + 1 : 2 * tile + 9] == 0).all()  # padded third tile of a 2-image row
    assert (grid[tile + 1 : tile + 9, 1:9] == 0).all()
    path = save_png(tmp_path / "media" / "grid.png", grid)
    np.testing.assert_array_equal(iio.imread(path), grid)


def test_grid_needs_rows():
    with pytest.raises(ValueError, match="at least one row"):
        image_grid([])


def test_annotate_grid_labels_rows_draws_the_divider_and_the_legend():
    from worldmodels.utils.images import annotate_grid

    grid = image_grid([torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)], scale=2, gap=1)
    out = annotate_grid(grid, ["truth", "sample"], title="t", legend=[("event", (0.0, 1.0, 0.0))],
                        divider=(2, 4, range(1, 2)))
    assert out.dtype == np.uint8 and out.shape[0] > grid.shape[0] and out.shape[1] > grid.shape[1]
    margin = out.shape[1] - 4 - grid.shape[1]
    body = out[:, margin : margin + grid.shape[1]]
    row_height = grid.shape[0] // 2
    top = next(y for y in range(out.shape[0]) if (body[y] != 255).any())
    x = grid.shape[1] // 2
    column = body[top : top + grid.shape[0], x - 1 : x + 2]
    assert (column[row_height + 2 : -2] == 255).all(axis=-1).any(axis=1).all()   # the divider on row 2
    assert not (column[2 : row_height - 2] == 255).all(axis=-1).any()             # not on row 1
    assert ((out == (0, 255, 0)).all(axis=-1)).any()                             # the legend's square
    assert (out[:, :margin] < 128).any()                                         # the labels
    with pytest.raises(ValueError, match="5 row labels"):
        annotate_grid(grid, list("abcde"))


def test_stacked_cameras_are_shown_side_by_side():
    from worldmodels.utils.images import cameras_side_by_side, openloop_frames

    videos = torch.randint(0, 256, (2, 3, 4, 5, 6), dtype=torch.uint8)   # [B, T, H, W, 2 cameras x RGB]
    wide = cameras_side_by_side(videos)
    assert wide.shape == (2, 3, 4, 10, 3)
    assert torch.equal(wide[..., :5, :], videos[..., :3]) and torch.equal(wide[..., 5:, :], videos[..., 3:])
    assert torch.equal(cameras_side_by_side(videos[..., :3]), videos[..., :3])   # one camera: unchanged
    frames = openloop_frames(videos, videos, None, context=1)
    assert frames.shape[0] == 3 and frames.shape[-1] == 3
