"""The ZSE-SBIR model family, its backbones and checkpoint loading."""

from .factory import DEFAULT_MODEL, create_model, load_model, model_fingerprint, save_weights
from .zse import ZSEModel

__all__ = ["DEFAULT_MODEL", "ZSEModel", "create_model", "load_model", "model_fingerprint", "save_weights"]
