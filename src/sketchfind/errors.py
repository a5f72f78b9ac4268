"""Errors sketchfind raises on purpose: each one carries a message meant for a person."""


class SketchfindError(Exception):
    """Base class: the CLI prints the message and exits non-zero; the API answers 4xx."""


class InputError(SketchfindError):
    """An input image, sketch, stroke list or SVG could not be used."""


class EmptySketchError(InputError):
    """A sketch with no ink on it."""


class CheckpointError(SketchfindError):
    """A weights file is missing, unreadable, or does not fit the model."""


class ConfigError(SketchfindError):
    """An unknown model name or an invalid configuration."""


class IndexStoreError(SketchfindError):
    """An index directory is missing, damaged, or built with another model."""
