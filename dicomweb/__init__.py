"""dicomweb: a DICOMweb server (PS3.18) on Twisted."""

__version__ = "0.1.0"
