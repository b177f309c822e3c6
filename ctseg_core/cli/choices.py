"""Argparse choices read from ctseg's registries (models, losses, optimizers) when first needed."""

from __future__ import annotations


def _registry(name: str):
    """A registry by name, imported when first needed: they import torch, which every other
    command (and ``ctseg --help``) would otherwise wait for."""
    if name == "AMP_MODES":
        from ..device import AMP_MODES as registry
    elif name == "MODELS":
        from ..models.registry import MODELS as registry
    elif name == "LOSSES":
        from ..training.losses import LOSSES as registry
    else:
        from ..training import optim

        registry = getattr(optim, name)
    return registry


class Names:
    """A registry's names as argparse ``choices``: read when a value is checked or help shown."""

    def __init__(self, registry: str) -> None:
        self.registry = registry

    def __iter__(self):
        return iter(_registry(self.registry))

    def __contains__(self, name: object) -> bool:
        return name in _registry(self.registry)

    def __len__(self) -> int:
        return len(_registry(self.registry))


class ChoicesHelp(str):
    """--help text listing a registry's entries with their titles, made when help is shown
    (argparse expands help with ``%``)."""

    def __new__(cls, registry: str, default: str) -> ChoicesHelp:
        text = super().__new__(cls, "%(choices)s")
        text.registry, text.default = registry, default
        return text

    def __mod__(self, params) -> str:
        registry = _registry(self.registry)
        if isinstance(registry, dict):
            listed = "; ".join(f"{name}: {entry.title}" for name, entry in registry.items())
        else:
            listed = ", ".join(registry)
        return f"{listed} (default {self.default})"


def registry_choice(name: str, default: str) -> dict:
    """``choices``, ``metavar`` and ``help`` of a flag whose values a registry names (a metavar,
    or argparse would list the choices, and import the registry, when the flag is added)."""
    return {"choices": Names(name), "metavar": "NAME", "help": ChoicesHelp(name, default)}
