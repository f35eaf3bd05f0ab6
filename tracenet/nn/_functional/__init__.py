"""Functional API by area; tracenet.nn.functional re-exports every public name."""
