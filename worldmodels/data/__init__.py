"""Generated datasets and training data providers."""
