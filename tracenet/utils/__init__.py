"""Small shared utilities (``tracenet.utils.hooks``)."""
