"""Who may open an association, and with which roles.

Policy, decided when the A-ASSOCIATE-RQ arrives (PS3.8 7.1.1):

- A *known* peer is a ``--dimse-peer`` whose AE title is the calling AE
  title and whose host resolves to the address the association comes from
  (an AE title alone is trivially forged; the address is checked too).
- ``--dimse-refuse-unknown``: any other calling AE is rejected
  ("calling AE title not recognised", PS3.8 Table 9-21).
- With ``--auth`` on, a known peer gets the read and write roles; anyone
  else must carry User Identity negotiation (PS3.7 D.3.3.7): type 2
  (username and passcode, checked against the users file like HTTP basic)
  or type 5 (a JWT, checked like an HTTP bearer token).  The principal's
  roles then apply as over HTTP: C-STORE needs ``write``.  Without User
  Identity the association is rejected.
- With ``--auth none`` every accepted association acts with both roles.

Every refusal is one log line naming the reason, the calling AE title and
the peer address (never patient data; never the credentials).
"""

from __future__ import annotations

import base64
import socket
import weakref
from typing import Any

from twisted.logger import Logger

from ..auth import ANONYMOUS, Authenticator, AuthError, Principal
from .bridge import Bridge, Stopping
from .peers import Peer

log = Logger()

#: PS3.8 Table 9-21: A-ASSOCIATE-RJ result 1 (permanent), source 1 (service
#: user), reason 1 (no reason given) / 3 (calling AE title not recognised).
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: PS3.7 D.3.3.7.1 User-Identity-Type.
USERNAME_PASSCODE, JWT = 2, 5

#: A known peer reads and writes (the roles of an unauthenticated server).
PEER_ROLES = ANONYMOUS.roles


def addresses_of(host: str) -> set[str]:
    """The IP addresses ``host`` resolves to (empty when it does not)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def calling_ae(assoc: Any) -> str:
    """The calling AE title of the A-ASSOCIATE-RQ (pynetdicom copies it to
    ``requestor.ae_title`` only after ``EVT_REQUESTED``)."""
    return str(getattr(assoc.requestor.primitive, "calling_ae_title", "") or "").strip()


def _plain_ip(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") else address


class Gate:
    """The association policy, bound to pynetdicom's ``EVT_REQUESTED`` and
    ``EVT_USER_ID``; :meth:`principal` tells handlers who is asking."""

    def __init__(self, peers: tuple[Peer, ...], refuse_unknown: bool,
                 authenticator: Authenticator | None, bridge: Bridge) -> None:
        self.peers = peers
        self.refuse_unknown = refuse_unknown
        self.authenticator = authenticator  # None: --auth none
        self.bridge = bridge
        self._principals: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()

    def known_peer(self, calling: str, address: str) -> Peer | None:
        for peer in self.peers:
            if peer.ae_title == calling and _plain_ip(address) in addresses_of(peer.host):
                return peer
        return None

    def principal(self, assoc: Any) -> Principal | None:
        """Who acts on ``assoc``; None when nobody was accepted."""
        return self._principals.get(assoc)

    # -- pynetdicom event handlers (in the association's thread) -------------

    def on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling, address = calling_ae(assoc), str(assoc.requestor.address)
        peer = self.known_peer(calling, address)
        if peer is None and self.refuse_unknown:
            self._reject(assoc, REJECT_CALLING_AE, "the calling AE is not a known peer", calling, address)
        elif self.authenticator is None:
            self._principals[assoc] = ANONYMOUS
        elif peer is not None:
            self._principals[assoc] = Principal(f"ae:{calling}", PEER_ROLES)
        elif assoc.requestor.user_identity is None:
            self._reject(assoc, REJECT_NO_REASON, "no user identity (authentication is on)", calling, address)

    def on_user_id(self, event: Any) -> tuple[bool, bytes | None]:
        """``EVT_USER_ID``: (accepted, server response)."""
        assoc = event.assoc
        if assoc in self._principals:  # a known peer, or --auth none: nothing to check
            return True, None
        calling, address = calling_ae(assoc), str(assoc.requestor.address)
        header = _authorization(event.user_id_type, event.primary_field, event.secondary_field)
        if header is None or self.authenticator is None:
            log.info("DIMSE association refused: unsupported user identity type {kind} "
                     "(calling AE {calling}, from {address})", kind=event.user_id_type,
                     calling=calling, address=address)
            return False, None
        try:
            principal = self.bridge.call(self.authenticator.authenticate, header)
        except (AuthError, Stopping) as exc:
            reason = exc.reason if isinstance(exc, AuthError) else str(exc)
            log.info("DIMSE association refused: {reason} (calling AE {calling}, from {address})",
                     reason=reason, calling=calling, address=address)
            return False, None
        self._principals[assoc] = principal
        log.info("DIMSE association by user {user} (calling AE {calling}, from {address})",
                 user=principal.name, calling=calling, address=address)
        return True, None

    def _reject(self, assoc: Any, rsd: tuple[int, int, int], reason: str, calling: str, address: str) -> None:
        log.info("DIMSE association refused: {reason} (calling AE {calling}, from {address})",
                 reason=reason, calling=calling, address=address)
        assoc.acse.send_reject(*rsd)
        assoc.kill()  # returns once the DUL has sent the A-ASSOCIATE-RJ and stopped


def _authorization(kind: int, primary: bytes, secondary: bytes | None) -> bytes | None:
    """The HTTP ``Authorization`` value that carries the same credentials, so
    the very authenticator of the web layer checks them."""
    if kind == USERNAME_PASSCODE:
        return b"Basic " + base64.b64encode(bytes(primary) + b":" + bytes(secondary or b""))
    if kind == JWT:
        return b"Bearer " + bytes(primary).strip()
    return None


__all__ = ["PEER_ROLES", "Gate", "addresses_of", "calling_ae"]
