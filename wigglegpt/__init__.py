"""WiggleGPT's machinery, a module per concern, used by the top-level scripts (README: Code map)."""
