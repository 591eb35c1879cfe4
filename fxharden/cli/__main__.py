"""``python -m fxharden.cli``: the ``fxharden`` command, where the console script is not installed."""

from . import app

app(prog_name="fxharden")
