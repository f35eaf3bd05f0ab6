"""The activation part of tracenet.nn.functional (re-exported there)."""
__all__ = []
