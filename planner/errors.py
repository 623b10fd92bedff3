"""Errors the planner raises. Each one names what was wrong and what is allowed.

All derive from :class:`PlannerError` (a ``ValueError``), so callers that only want "bad input"
catch one class; the UI shows ``str(error)`` next to the offending input.
"""

from __future__ import annotations


class PlannerError(ValueError):
    """Base class: the input cannot be planned. ``field`` names the offending input when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UnknownModelError(PlannerError):
    """A catalog id that is not in the catalog (the message lists close matches)."""


class ConfigError(PlannerError):
    """A model config (config.json) that is malformed, partial or inconsistent."""


class UnsupportedModelError(PlannerError):
    """A ``model_type`` no architecture module describes (the message lists the supported ones)."""


class MethodConfigError(PlannerError):
    """A PEFT method configuration that is invalid for the method or for this model."""


class TargetModulesError(MethodConfigError):
    """``target_modules`` (or similar) matched nothing, or matched a module the method cannot adapt."""
