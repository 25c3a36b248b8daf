"""DreamerV3 (Hafner et al. 2023): world model, actor-critic in imagination, and their pieces."""
