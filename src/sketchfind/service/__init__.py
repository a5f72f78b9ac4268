"""The web service: a FastAPI app (REST API + the draw-to-search page) over one shared Searcher."""

from .main import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
