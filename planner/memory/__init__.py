"""The memory model: (spec, method plan, settings) -> MemoryBudget. See docs/memory-model.md."""

from planner.memory.budget import BREAKDOWN_KEYS, MemoryBudget
from planner.memory.model import estimate_memory
from planner.memory.settings import TrainingSettings

__all__ = ["BREAKDOWN_KEYS", "MemoryBudget", "TrainingSettings", "estimate_memory"]
