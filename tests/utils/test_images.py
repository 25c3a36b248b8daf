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
