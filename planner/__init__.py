"""peft-planner: exact parameter counts, memory budgets and recommendations for fine-tuning.

Pure Python (pydantic, numpy): never imports torch, transformers or streamlit.

    >>> import planner
    >>> plan = planner.estimate("meta-llama/Llama-2-7b-hf", method="lora", r=8, target_modules=["q_proj", "v_proj"])
    >>> plan.trainable_params
    4194304
"""

from planner.api import estimate
from planner.gpus import GPU, custom_gpu, gpu, gpus
from planner.solve import fits, solve_gpus, solve_max, sweep
from planner.recommend import recommend
from planner.catalog import model_ids
from planner.errors import (
    ConfigError, MethodConfigError, PlannerError, TargetModulesError, UnknownModelError, UnsupportedModelError,
)
from planner.methods import method_names, methods
from planner.models import load_model
from planner.plan import Plan
from planner.spec import ModelSpec
from planner.timing import TrainingTime, training_time

__all__ = [
    "estimate", "recommend", "training_time", "TrainingTime", "solve_max", "solve_gpus", "sweep", "fits", "gpu", "gpus", "custom_gpu", "GPU", "load_model", "model_ids", "methods", "method_names", "Plan", "ModelSpec", "PlannerError",
    "ConfigError", "MethodConfigError", "TargetModulesError", "UnknownModelError", "UnsupportedModelError",
]
__version__ = "0.1.0"
