"""Δ-IRIS (Micheli, Alonso and Fleuret 2024): IRIS with a context-aware tokenizer that
encodes frame deltas in a few tokens and a world model over continuous frame embeddings."""
