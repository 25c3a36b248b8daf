"""Environments and renderers: the env factory and the batched renderers' Python side."""
