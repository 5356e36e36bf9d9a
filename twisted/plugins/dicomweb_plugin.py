"""twistd plugin: ``twistd -n dicomweb --port 5985``.

Lazy on purpose: ``twistd --help`` must not import pydicom or the web app.
"""

from twisted.application.service import ServiceMaker

dicomweb = ServiceMaker(
    "dicomweb",
    "dicomweb.tap",
    "A DICOMweb server (STOW-RS, QIDO-RS, WADO-RS, WADO-URI).",
    "dicomweb",
)
