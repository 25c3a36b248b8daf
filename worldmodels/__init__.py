"""worldmodels: world-model reinforcement learning with fused hot paths.

Importing the package is cheap: nothing here imports Triton, compiles a kernel or
loads the C++ extension. Subpackages are imported on demand.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
