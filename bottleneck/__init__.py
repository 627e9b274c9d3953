"""bottleneck: frozen pretrained CNN features, cached once, with classical heads on top."""

__version__ = "0.1.0"
