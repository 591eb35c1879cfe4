"""The hardened model answers its original class's methods, properties and attributes.

A library calls more of its model than ``forward``: ``encoder.embed_utterance(wav)``,
``model.device``, ``model.config``. ``adopt_interface`` gives the hardened model what the
original class defines beyond ``nn.Module`` (methods, properties, static and class methods),
bound to the hardened model, so they run its graph (``self(x)``, ``self.forward(x)``) and its
hardened layers (``self.lstm``); and the original instance's plain attributes (values that are
not parameters, buffers or submodules, e.g. a ``device`` set in ``__init__``), copied.

Names the hardened model already has (``nn.Module``'s and ``GraphModule``'s own: ``train``,
``state_dict``, ``graph``, ...; its submodules and parameters) keep their hardened meaning.
"""

from __future__ import annotations

from typing import List

from torch import fx, nn

__all__ = ["adopt_interface"]


def adopt_interface(hardened: fx.GraphModule, original: nn.Module) -> List[str]:
    """Give ``hardened`` (a module whose class is its own, as every ``GraphModule``'s) the
    methods and properties of ``type(original)`` and the plain attributes of ``original``.

    Returns:
        The names added.
    """
    cls = type(hardened)
    taken = set(dir(cls)) | set(vars(hardened)) | set(hardened._modules) | set(hardened._parameters) \
        | set(hardened._buffers)
    added: List[str] = []
    for klass in type(original).__mro__:
        if klass is nn.Module or klass is object or issubclass(nn.Module, klass):
            continue
        if issubclass(klass, nn.Module) and klass.__module__.startswith("torch."):
            break  # torch's own layers (a model that is an nn.Sequential): nothing of the user's above
        for name, value in vars(klass).items():
            if name.startswith("__") or name == "forward" or name in taken:
                continue
            setattr(cls, name, value)  # the first class in the MRO defines it, as on the original
            taken.add(name)
            added.append(name)
    for name, value in vars(original).items():
        if name.startswith("_") or name in taken or isinstance(value, nn.Module):
            continue
        setattr(hardened, name, value)
        added.append(name)
    return added
