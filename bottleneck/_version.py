"""The release, in a module of its own so that modules inside the package need not import its face."""

__version__ = "0.2.0"
