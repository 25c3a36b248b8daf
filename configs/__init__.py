"""Hydra configuration tree of worldmodels, installed as ``worldmodels.configs``."""
