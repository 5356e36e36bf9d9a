"""Pure DICOM logic. Nothing in this package imports Twisted."""
