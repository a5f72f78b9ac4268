"""sketchfind: find photos in your own collection by drawing a sketch (ZSE-SBIR, zero-shot)."""

from .config import ModelConfig, PreprocessConfig, get_model_config, list_models
from .errors import SketchfindError
from .models import create_model, load_model

__version__ = "0.1.0"
__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "SketchfindError",
    "create_model",
    "get_model_config",
    "list_models",
    "load_model",
]
