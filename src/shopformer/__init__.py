"""shopformer: behaviour-aware sequence models for e-commerce event logs."""

__version__ = "0.1.0"
