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


class StreamReader:
    """Reads an SmClient's stream on a thread, as a real client would: counts
    the stanzas it handles (XEP-0198 `h`), answers the server's `<r/>`, and
    records message bodies in arrival order, until the connection ends."""

    def __init__(self, client, h=0):
        import threading
        import xml.etree.ElementTree as ET

        self.client = client
        self.h = h
        self.bodies = []
        self.nonzas = []
        self.closed = threading.Event()
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.parser.feed(
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        self.depth = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, pending=b""):
        self.pending = pending
        self.thread.start()
        return self

    def _handle(self, element):
        tag = element.tag
        if tag in ("{jabber:client}message", "{jabber:client}presence", "{jabber:client}iq"):
            self.h = (self.h + 1) % 2**32
            body = element.find("{jabber:client}body")
            if body is not None:
                self.bodies.append(body.text or "")
        elif tag == f"{{{SM}}}r":
            try:
                self.client.send(f"<a xmlns='{SM}' h='{self.h}'/>")
            except OSError:
                pass
        else:
            self.nonzas.append(tag)

    def _feed(self, data):
        self.parser.feed(data)
        for event, element in self.parser.read_events():
            if event == "start":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self._handle(element)
                    element.clear()

    def _run(self):
        try:
            if self.pending:
                self._feed(self.pending)
            self.client.sock.settimeout(None)
            while True:
                try:
                    chunk = self.client.sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                self._feed(chunk)
        finally:
            self.closed.set()
