"""The HTTP layer: Klein routes on the Twisted reactor."""

from .app import DICOMwebApp

__all__ = ["DICOMwebApp"]
