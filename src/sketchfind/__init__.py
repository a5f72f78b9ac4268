"""sketchfind: find photos in your own collection by drawing a sketch (ZSE-SBIR, zero-shot).

import sketchfind

searcher, report = sketchfind.Searcher.from_photos(["~/Pictures"], "my-index")  # index, then open
result = searcher.search("cup.png", k=10)                                       # ranked photos
model = sketchfind.load_model()                                                 # the default model
"""

from .config import ModelConfig, PreprocessConfig, get_model_config, list_models
from .errors import SketchfindError
from .models import create_model, load_model

__version__ = "0.1.0"
__all__ = [
    "ModelConfig",
    "PreprocessConfig",
    "Searcher",
    "SketchfindError",
    "create_model",
    "get_model_config",
    "list_models",
    "load_model",
]


def __getattr__(name: str):
    # the Searcher pulls in FAISS and the index code: imported when first used, not with the package
    if name == "Searcher":
        from .search import Searcher

        return Searcher
    raise AttributeError(f"module 'sketchfind' has no attribute {name!r}")
