"""Bytes in and out of files and HTTP bodies: multipart/related framing
(:mod:`.multipart`) and file I/O helpers (:mod:`.files`). No DICOM knowledge
and no Twisted: both the DICOM analysis and the web layer use them."""
