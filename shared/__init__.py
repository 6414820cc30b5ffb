"""Code both sides of Strata use: data formats and splits, model, metrics, privacy accounting."""
