"""The ``fxharden`` command line: parse -> build config -> call the public API -> print/save.

One module per command: ``sweep`` (accuracy versus noise, μ, results files and plots),
``budget`` (a per-site noise allocation), ``inspect`` (what ``harden`` does to a model),
``train`` (QAT / noisy training with checkpoints) and ``reproduce`` (a paper experiment from a
recipe file). ``_app`` holds the Typer app and what every command shares (model, device, data
and harden-config resolution, ``user_errors``).
"""

from ._app import app
from . import budget, inspect, reproduce, sweep, train  # noqa: E402,F401  (each registers its command)

__all__ = ["app"]
