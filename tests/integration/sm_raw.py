"""A raw stream-management (XEP-0198) client for the tests: logs in by hand,
enables, acks or not, drops its connection without closing the stream, and
resumes, so that every counter and error can be checked byte by byte."""

import re
import socket

from conftest import RawClient

SM = "urn:xmpp:sm:3"


class SmClient(RawClient):
    def __init__(self, node, timeout=10.0):
        super().__init__(node, timeout)
        self.received = []

    def bind(self, resource):
        self.send(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        bound = self.recv_until("</iq>")
        return bound[bound.index("<jid>") + 5 : bound.index("</jid>")]

    def enable(self, resume=True):
        self.send(f"<enable xmlns='{SM}'" + (" resume='true'" if resume else "") + "/>")
        answer = self.recv_until("/>")
        return answer

    def presence(self):
        self.send("<presence/>")

    def drop(self):
        """Lose the connection without closing the stream (a phone changing networks)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        self.close()

    def read_bodies(self, count, timeout=None):
        """Read until `count` more message bodies arrived; answer the server's <r/> only when asked."""
        bodies = []
        while len(bodies) < count:
            text = self.recv_until("</message>", timeout=timeout)
            bodies.extend(re.findall(r"<body>([^<]*)</body>", text))
        self.received.extend(bodies)
        return bodies


def sm_id(enabled):
    match = re.search(r"id='([^']+)'", enabled)
    assert match, enabled
    return match.group(1)
