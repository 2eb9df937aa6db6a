"""Training of the embedded Shapes pipeline and its scorers (the `train` extra)."""
