"""TLS for our outgoing HTTPS calls (identity provider, CouchDB).

By default Twisted's browser-like policy checks certificates against the
system CAs. With a CA file, only those CAs are trusted: a private server's
certificate and host name are still checked, never skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

if TYPE_CHECKING:
    # what ssl.trustRootFromCertificates returns; Twisted defines it only here
    from twisted.internet._sslverify import IOpenSSLTrustRoot


def load_trust_root(ca_file: str) -> IOpenSSLTrustRoot:
    """Every certificate of a PEM bundle, as a Twisted trust root."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet import ssl

    with open(ca_file, "rb") as fp:
        certs = x509.load_pem_x509_certificates(fp.read())
    root: IOpenSSLTrustRoot = ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certs])
    return root


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """Verify a server's certificate and host name against a given trust root.

    (Declared an ``IPolicyForHTTPS``: otherwise Agent takes it for a legacy
    context factory.)
    """

    def __init__(self, trust_root: IOpenSSLTrustRoot) -> None:
        self._trust_root = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust_root)


def https_policy(ca_file: str | None) -> IPolicyForHTTPS:
    """The policy for an Agent: system CAs, or only those of ``ca_file``."""
    if ca_file is None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        return BrowserLikePolicyForHTTPS()
    return TrustRootPolicy(load_trust_root(ca_file))
