"""DIMSE (DICOM PS3.7/PS3.8 networking) inside the service, through pynetdicom.

- :mod:`~dicomweb.dimse.peers` — AE titles, ``AE=host:port`` peers and the
  listen address (pure; the option table imports it).
- :mod:`~dicomweb.dimse.server` — the Application Entity, its listener and
  association policy, started and stopped as a Twisted ``Service``.
- :mod:`~dicomweb.dimse.bridge` — how pynetdicom's threads reach the store on
  the reactor, and how the service waits for work in flight.
- :mod:`~dicomweb.dimse.identity` — who may open an association.
- :mod:`~dicomweb.dimse.storage` — C-STORE SCP (the STOW-RS ingest path).
- :mod:`~dicomweb.dimse.find` — C-FIND SCP (the QIDO-RS query model).
- :mod:`~dicomweb.dimse.retrieve` — C-GET and C-MOVE SCP.

This package imports pynetdicom only in the modules that need it, so reading
the options does not.
"""
