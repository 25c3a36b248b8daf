"""IRIS (Micheli et al., ICLR 2023): a VQ-VAE tokenizer, a transformer world model over
interleaved observation and action tokens, and an actor-critic trained in imagination."""
