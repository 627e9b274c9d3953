"""`python -m bottleneck_features` runs the `bottleneck` command."""

from .cli import app

app(prog_name="bottleneck")
