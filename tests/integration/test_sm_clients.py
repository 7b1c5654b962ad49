"""XEP-0198 stream management with real client libraries: slixmpp's xep_0198
plugin over TCP and @xmpp/client's stream management over WebSocket lose
their connection (no stream close, as a phone changing networks does) and
resume, on the same node in `starling serve` and on the other
connection-manager of the cluster, also after the first one drained or was
killed. What a contact sent meanwhile arrives once, what the client sent
just before the loss is not sent twice, no new resource is bound, and the
contact never sees the session go away; past the resumption timeout the
client binds anew and gets what waited from offline storage.

A relay (`DroppingProxy`) cuts the connection with a reset, or lets it
vanish without the server noticing (the old stream is still open when the
client resumes)."""

import asyncio
import json
import os
import re
import signal
import socket
import struct
import subprocess
import urllib.request

import pytest

from conftest import Client, handled, login, logout, wait_until_async
from test_cluster import Node, befriend, cluster  # noqa: F401 (the cluster fixture)
from sm_raw import SM, SmClient, sm_id
from test_websocket import NODE, WEB_DIR, node_arguments

needs_node = pytest.mark.skipif(
    NODE is None or not (WEB_DIR / "node_modules" / "@xmpp" / "client").is_dir(),
    reason="needs node and `npm ci --prefix tests/web` (scripts/test.sh installs them)",
)


def sm_events(http, event):
    """`starling_sm_events_total{event=...}` of the node whose HTTP listener is `http` (host:port)."""
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    match = re.search(rf'^starling_sm_events_total\{{event="{event}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class ResumingClient(Client):
    """A slixmpp client with its XEP-0198 plugin, recording what the plugin
    and the binding tell: `<enabled/>`, `<resumed/>`, `<failed/>`, binds."""

    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.register_plugin("xep_0198")
        loop = asyncio.get_event_loop()
        self.enabled = loop.create_future()
        self.resumed: asyncio.Queue = asyncio.Queue()
        self.sm_failures = []
        self.binds = []
        self.add_event_handler("sm_enabled", lambda s: self.enabled.done() or self.enabled.set_result(s))
        self.add_event_handler("session_resumed", lambda s: self.resumed.put_nowait(s))
        self.add_event_handler("sm_failed", lambda s: self.sm_failures.append(str(s)))
        self.add_event_handler("session_bind", lambda jid: self.binds.append(str(jid)))

    @property
    def sm(self):
        return self.plugin["xep_0198"]

    async def acked_everything(self, timeout=10.0):
        """Ask the server for an ack; return once it acknowledged every stanza
        this client sent (its `h` equals the client's own count)."""
        self.sm.request_ack()
        await wait_until_async(
            lambda: self.sm.last_ack == self.sm.seq and not self.sm.unacked_queue,
            timeout=timeout,
            what=f"the server to ack all {self.sm.seq} stanzas (it acked {self.sm.last_ack})",
        )


async def resuming_login(node, jid, password, resource):
    client = ResumingClient(f"{jid}/{resource}", password)
    client.connect(host="127.0.0.1", port=node.c2s)
    done, _ = await asyncio.wait([client.started, client.failed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert client.started in done, f"login of {jid}/{resource} failed"
    enabled = await asyncio.wait_for(client.enabled, 10)
    assert enabled["id"] and enabled["resume"], str(enabled)
    await client.get_roster()
    client.send_presence()
    return client


async def alice_and_bob(add_user, alice_node, bob_node):
    """Alice (slixmpp with stream management) on `alice_node` and Bob on
    `bob_node`, mutual contacts: (alice, bob, their clients)."""
    alice, alice_pw = add_user("alice")
    bob, bob_pw = add_user("bob")
    a = await resuming_login(alice_node, alice, alice_pw, "phone")
    b = await login(bob_node, bob, bob_pw, "desk")
    b.auto_authorize = a.auto_authorize = True
    await befriend(b, a, alice)
    return alice, bob, a, b


async def bodies_until(client, last, timeout=15.0):
    """The bodies `client` receives, up to and including `last`."""
    bodies = []
    while not bodies or bodies[-1] != last:
        bodies.append((await client.next_message(timeout=timeout))["body"])
    return bodies


async def stayed_available(a, b, heard):
    """Contact `b` never saw `a`'s session go away: nothing unavailable from
    it among the presences `heard` before `a`'s next presence."""
    a.send_presence(pstatus="back")
    bound = a.boundjid.full
    await b.next_presence(lambda p: p["from"] == bound and p["status"] == "back", timeout=15)
    gone = [str(p) for p in heard if p["from"] == bound and p["type"] == "unavailable"]
    assert gone == [], gone


async def slixmpp_resumes(first, second, contact_node, add_user, first_http, silent=False, meanwhile=True):
    """Alice (slixmpp, xep_0198) on `first` loses her connection and resumes
    on `second`; Bob, her contact on `contact_node`, writes to her meanwhile.
    `silent`: the server does not notice the loss before she resumes (her
    old connection still open there, what Bob sends written into the void).
    `meanwhile`: Bob writes while she is away (without it, nothing goes
    through her old connection after her last stanza: the count of what the
    server handled from her must be right all the same)."""
    proxy = await DroppingProxy(first.c2s).start()
    alice, bob, a, b = await alice_and_bob(add_user, Node("localhost", proxy.port), contact_node)
    sm_id = a.sm.sm_id
    bound = a.boundjid.full
    assert a.binds == [bound]

    for number in range(3):
        b.send_message(mto=bound, mbody=f"before-{number}", mtype="chat")
    assert await bodies_until(a, "before-2") == ["before-0", "before-1", "before-2"]
    # The server handled this one (Bob has it), the client has no ack for it yet.
    a.send_message(mto=bob, mbody="sent-before-the-loss", mtype="chat")
    assert (await b.next_message())["body"] == "sent-before-the-loss"

    detached_before = sm_events(first_http, "detached")
    heard = []
    b.add_event_handler("presence", heard.append)
    gone = a.disconnected
    if silent:
        proxy.vanish()
    else:
        proxy.drop()
    await asyncio.wait_for(gone, 10)
    if not silent:
        await wait_until_async(
            lambda: sm_events(first_http, "detached") > detached_before, what="the server to detach the lost stream"
        )
    # Still available, so a message to the full JID and one to the bare JID
    # both wait for the session (neither bounced nor stored offline).
    away = ["while-away-0", "while-away-1", "while-away-bare"] if meanwhile else []
    for body in away:
        b.send_message(mto=alice if body.endswith("bare") else bound, mbody=body, mtype="chat")
    await handled(b)
    # slixmpp holds what is sent while disconnected and sends it once resumed.
    a.send_message(mto=bob, mbody="written-while-offline", mtype="chat")

    a.connect(host="127.0.0.1", port=second.c2s)
    resumed = await asyncio.wait_for(a.resumed.get(), 20)
    assert resumed["previd"] == sm_id, str(resumed)
    assert a.sm_failures == []
    assert a.binds == [bound], "resumption does not bind again"
    assert a.boundjid.full == bound
    if silent:
        # Section 5: the old stream, still open at the server, is terminated.
        await asyncio.wait_for(proxy.upstream_closed.wait(), 10)

    b.send_message(mto=bound, mbody="after-resume", mtype="chat")
    assert await bodies_until(a, "after-resume") == [*away, "after-resume"]
    a.send_message(mto=bob, mbody="alice-after-resume", mtype="chat")
    assert await bodies_until(b, "alice-after-resume") == ["written-while-offline", "alice-after-resume"]
    # The server's count of Alice's stanzas survived the move: every one is
    # acknowledged, none was counted twice or lost.
    await a.acked_everything()

    await stayed_available(a, b, heard)
    await logout(a, b)
    proxy.close()


async def test_slixmpp_resumes_on_the_same_node(server):
    node = f"127.0.0.1:{server.http}"
    await slixmpp_resumes(server, server, server, lambda name: server.add_user(name), node)


async def test_slixmpp_resumes_before_the_server_noticed_the_loss(server):
    node = f"127.0.0.1:{server.http}"
    await slixmpp_resumes(server, server, server, lambda name: server.add_user(name), node, silent=True)


async def test_slixmpp_resumes_on_the_other_node(cluster):  # noqa: F811
    await slixmpp_resumes(
        cluster.node("cm-1"), cluster.node("cm-2"), cluster.node("cm-1"), cluster.add_user,
        cluster.processes["cm-1"]["http"],
    )


async def test_slixmpp_resumes_on_the_other_node_at_once_after_sending(cluster):  # noqa: F811
    await slixmpp_resumes(
        cluster.node("cm-1"), cluster.node("cm-2"), cluster.node("cm-1"), cluster.add_user,
        cluster.processes["cm-1"]["http"], silent=True, meanwhile=False,
    )


def journaled_h_in(cluster, sm_id):
    """The count of Alice's stanzas the cluster's resumption store holds."""
    keys = subprocess.run(
        ["redis-cli", "-p", str(cluster.redis_port), "--scan", "--pattern", f"*smres:*{sm_id}*"],
        capture_output=True, text=True, timeout=10,
    ).stdout.split()
    if len(keys) != 1:
        return None
    value = subprocess.run(
        ["redis-cli", "-p", str(cluster.redis_port), "hget", keys[0], "h_in"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    return int(value) if value.isdigit() else None


async def slixmpp_resumes_after_its_node_went(cluster, sig):  # noqa: F811
    """Alice (slixmpp) on cm-1, Bob on cm-2; cm-1 goes (`sig`: SIGTERM drains
    it, its streams closed with `<system-shutdown/>`; SIGKILL crashes it and
    the janitor detaches its streams); Alice resumes on cm-2 and gets what
    Bob sent meanwhile, once."""
    alice, bob, a, b = await alice_and_bob(cluster.add_user, cluster.node("cm-1"), cluster.node("cm-2"))
    bound = a.boundjid.full
    b.send_message(mto=bound, mbody="before", mtype="chat")
    assert await bodies_until(a, "before") == ["before"]
    a.send_message(mto=bob, mbody="alice-before", mtype="chat")
    assert (await b.next_message())["body"] == "alice-before"

    if sig == signal.SIGKILL:
        # What cm-1 handled from Alice is journaled to Redis just after it
        # was routed: a crash in between makes her client send it again
        # (XEP-0198 allows no better without the recipient deduplicating).
        await wait_until_async(
            lambda: journaled_h_in(cluster, a.sm.sm_id) == a.sm.seq, what="cm-1 to journal Alice's count"
        )
    heard = []
    b.add_event_handler("presence", heard.append)
    gone = a.disconnected
    cluster.kill("cm-1", sig)
    await asyncio.wait_for(gone, 15)
    away = ["while-away-0", "while-away-bare"]
    b.send_message(mto=bound, mbody=away[0], mtype="chat")
    b.send_message(mto=alice, mbody=away[1], mtype="chat")
    await handled(b)

    a.connect(host="127.0.0.1", port=cluster.node("cm-2").c2s)
    resumed = await asyncio.wait_for(a.resumed.get(), 30)
    assert a.sm_failures == [] and a.binds == [bound], (a.sm_failures, a.binds)
    assert resumed["previd"]
    b.send_message(mto=bound, mbody="after-resume", mtype="chat")
    got = await bodies_until(a, "after-resume")
    # Each once. Not necessarily in order: what reaches cm-1 while it closes
    # the stream is rerouted stanza by stanza, concurrently.
    assert sorted(got[:-1]) == sorted(away), got
    a.send_message(mto=bob, mbody="alice-after-resume", mtype="chat")
    assert await bodies_until(b, "alice-after-resume") == ["alice-after-resume"]
    await a.acked_everything()
    await stayed_available(a, b, heard)
    await logout(a, b)


async def test_slixmpp_resumes_on_the_other_node_when_its_node_drains(cluster):  # noqa: F811
    await slixmpp_resumes_after_its_node_went(cluster, signal.SIGTERM)


async def test_slixmpp_resumes_on_the_other_node_when_its_node_was_killed(cluster):  # noqa: F811
    await slixmpp_resumes_after_its_node_went(cluster, signal.SIGKILL)


async def test_slixmpp_after_the_timeout_binds_anew_and_gets_what_waited(server_factory):
    """Past `sm.resume_timeout_secs` the session ends (the contact sees it
    go); slixmpp's `<resume/>` gets `<failed/>`, it binds a new session and
    receives, from offline storage, what was sent to the detached one: once."""
    server = server_factory(extra_toml="[sm]\nresume_timeout_secs = 1\n")
    proxy = await DroppingProxy(server.c2s).start()
    alice, bob, a, b = await alice_and_bob(server.add_user, Node("localhost", proxy.port), server)
    bound = a.boundjid.full
    b.send_message(mto=bound, mbody="read-and-acked", mtype="chat")
    assert await bodies_until(a, "read-and-acked") == ["read-and-acked"]
    a.sm.send_ack()
    await a.acked_everything()  # its <r/> is answered after the <a/> was taken
    detached_before = sm_events(f"127.0.0.1:{server.http}", "detached")
    gone = a.disconnected
    proxy.drop()
    await asyncio.wait_for(gone, 10)
    await wait_until_async(
        lambda: sm_events(f"127.0.0.1:{server.http}", "detached") > detached_before, what="the detach"
    )
    b.send_message(mto=bound, mbody="while-away", mtype="chat")
    await handled(b)
    await b.next_presence(lambda p: p["from"] == bound and p["type"] == "unavailable", timeout=15)

    a.connect(host="127.0.0.1", port=server.c2s)
    await wait_until_async(lambda: len(a.binds) == 2, what="slixmpp to bind a new session")
    assert len(a.sm_failures) == 1 and "item-not-found" in a.sm_failures[0], a.sm_failures
    assert a.resumed.empty()
    a.send_presence()
    assert await bodies_until(a, "while-away") == ["while-away"]
    b.send_message(mto=a.boundjid.full, mbody="after", mtype="chat")
    assert await bodies_until(a, "after") == ["after"]
    await logout(a, b)
    proxy.close()


class DroppingProxy:
    """A TCP relay in front of a node's listener, to lose a connection as a
    network change does. `drop()` resets both sides at once (no stream close,
    no WebSocket close frame): the server notices at once. `vanish()` resets
    the client's side only and swallows whatever the server still writes: the
    server does not notice, as with a phone that left a network."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.pairs = []
        self.vanished = False
        self.upstream_closed = asyncio.Event()

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _relay(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.pairs.append((writer, up_writer))

        async def pipe(source, sink, to_server):
            try:
                while data := await source.read(65536):
                    if not self.vanished:
                        sink.write(data)
                        await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                if not to_server:
                    self.upstream_closed.set()
                if not self.vanished:
                    sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    @staticmethod
    def _reset(writer):
        try:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        writer.transport.abort()

    def drop(self):
        for client_side, server_side in self.pairs:
            self._reset(client_side)
            self._reset(server_side)

    def vanish(self):
        self.vanished = True
        for client_side, _ in self.pairs:
            self._reset(client_side)

    def close(self):
        self.vanished = False
        self.drop()
        self.server.close()


class WebClient:
    """tests/web/xmpp_client_sm.mjs: @xmpp/client over WebSocket, its events
    collected as they come."""

    def __init__(self, process):
        self.process = process
        self.events = []
        self.stderr = b""
        self.readers = asyncio.gather(self._read(), self._read_stderr())

    @classmethod
    async def start(cls, url, domain, username, password, resource="web", auto_reconnect=False):
        process = await asyncio.create_subprocess_exec(
            NODE, *node_arguments(), str(WEB_DIR / "xmpp_client_sm.mjs"), cwd=str(WEB_DIR),
            env={**os.environ, "WS_URL": url, "DOMAIN": domain, "USERNAME": username,
                 "PASSWORD": password, "RESOURCE": resource, "AUTO_RECONNECT": "1" if auto_reconnect else "0"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self):
        while line := await self.process.stdout.readline():
            self.events.append(json.loads(line))

    async def _read_stderr(self):
        while chunk := await self.process.stderr.read(65536):
            self.stderr += chunk

    def command(self, **cmd):
        self.process.stdin.write((json.dumps(cmd) + "\n").encode())

    def of(self, kind):
        return [event for event in self.events if event["event"] == kind]

    async def expect(self, predicate, what, timeout=20.0):
        """The first event matching `predicate`, waiting for it."""
        async def seen():
            # The event first: a client that reports it and then exits (as
            # "stopped" does) has done what was expected of it.
            if any(predicate(event) for event in self.events):
                return True
            if self.process.returncode is not None:
                await self.readers  # whatever it wrote before exiting is read
                if any(predicate(event) for event in self.events):
                    return True
                raise AssertionError(
                    f"the web client exited ({self.process.returncode}) before {what}: {self.events} {self.stderr!r}"
                )
            return any(predicate(event) for event in self.events)

        await wait_until_async(seen, timeout=timeout, what=f"{what}; events {self.events}")
        return next(event for event in self.events if predicate(event))

    def bodies(self):
        return [event["body"] for event in self.of("message")]

    async def stop(self):
        if self.process.returncode is None:
            self.command(cmd="stop")
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self.readers


async def web_client_resumes(first_port, second_url, contact_node, add_user, first_http):
    """Juliet (@xmpp/client over WebSocket through a relay to the node
    listening on HTTP port `first_port`) loses her connection and resumes at
    `second_url`, or (None) by the library's own reconnect, through the relay
    again to the same node; Romeo (slixmpp on `contact_node`) writes to her
    meanwhile."""
    juliet, juliet_pw = add_user("juliet")
    romeo, romeo_pw = add_user("romeo")
    r = await login(contact_node, romeo, romeo_pw, "orchard")
    proxy = await DroppingProxy(first_port).start()
    web = await WebClient.start(
        f"ws://127.0.0.1:{proxy.port}/xmpp-websocket", "localhost", juliet.split("@")[0], juliet_pw,
        auto_reconnect=second_url is None,
    )
    try:
        enabled = await web.expect(lambda e: e["event"] == "enabled", "<enabled/>")
        assert enabled["resume"] == "true" and enabled["id"], enabled
        await web.expect(lambda e: e["event"] == "ready", "the web client online")
        bound = f"{juliet}/web"
        for number in range(3):
            r.send_message(mto=bound, mbody=f"before-{number}", mtype="chat")
        await web.expect(lambda e: e.get("body") == "before-2", "the first messages")
        web.command(cmd="send", to=romeo, body="sent-before-the-loss")
        assert (await r.next_message())["body"] == "sent-before-the-loss"

        detached_before = sm_events(first_http, "detached")
        proxy.drop()
        await web.expect(lambda e: e["event"] == "disconnect", "the client to notice the loss")
        await wait_until_async(
            lambda: sm_events(first_http, "detached") > detached_before, what="the server to detach the lost stream"
        )
        r.send_message(mto=bound, mbody="while-away-0", mtype="chat")
        r.send_message(mto=bound, mbody="while-away-1", mtype="chat")
        r.send_message(mto=juliet, mbody="while-away-bare", mtype="chat")
        await handled(r)

        if second_url:
            web.command(cmd="reconnect", url=second_url)
        resumed = await web.expect(lambda e: e["event"] in ("resumed", "failed"), "<resumed/> or <failed/>")
        assert resumed["event"] == "resumed" and resumed["previd"] == enabled["id"], resumed
        await web.expect(lambda e: e["event"] == "sm-resumed", "the library to finish the resumption")
        reconnected = await web.expect(lambda e: e["event"] == "reconnected", "the reconnection")
        assert reconnected["service"] == (second_url or f"ws://127.0.0.1:{proxy.port}/xmpp-websocket"), reconnected

        r.send_message(mto=bound, mbody="after-resume", mtype="chat")
        await web.expect(lambda e: e.get("body") == "after-resume", "a message after the resumption")
        assert web.bodies() == [
            "before-0", "before-1", "before-2", "while-away-0", "while-away-1", "while-away-bare", "after-resume",
        ]
        web.command(cmd="send", to=romeo, body="juliet-after-resume")
        assert await bodies_until(r, "juliet-after-resume") == ["juliet-after-resume"]
        web.command(cmd="acked")
        acked = await web.expect(lambda e: e["event"] == "acked", "the server's ack")
        assert acked["unacked"] == 0, acked
        assert web.of("online") == [{"event": "online", "jid": bound}], "resumption does not bind again"
        assert web.of("failed") == [] and web.of("sm-fail") == [] and web.of("error") == [], web.events
    finally:
        await web.stop()
        proxy.close()
        await logout(r)
    assert web.process.returncode == 0, web.events


@needs_node
async def test_xmpp_client_resumes_over_websocket_on_the_same_node(server):
    await web_client_resumes(server.http, None, server, lambda name: server.add_user(name), f"127.0.0.1:{server.http}")


@needs_node
async def test_xmpp_client_resumes_over_websocket_on_the_other_node(cluster):  # noqa: F811
    second_http = cluster.processes["cm-2"]["http"]
    await web_client_resumes(
        int(cluster.processes["cm-1"]["http"].rsplit(":", 1)[1]), f"ws://{second_http}/xmpp-websocket",
        cluster.node("cm-1"), cluster.add_user, cluster.processes["cm-1"]["http"],
    )


async def test_resumed_counts_the_stanzas_handled_just_before_the_loss(server):
    """The bytes behind the duplicates the clients above would see: the server
    handled the client's last stanza (its recipient has it), nothing was
    written to the client since, and the connection is lost; `<resumed h/>`
    must count that stanza, or the client sends it again (section 5)."""
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    b = await login(server, bob, bob_pw, "desk")
    raw = SmClient(server)
    raw.authenticate(alice, alice_pw)
    raw.bind("phone")
    previd = sm_id(raw.enable())
    raw.send(f"<message to='{bob}/desk' type='chat' id='last'><body>last words</body></message>")
    assert (await b.next_message())["body"] == "last words"
    raw.drop()
    again = SmClient(server)
    again.authenticate(alice, alice_pw)
    again.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
    resumed = again.recv_until("/>")
    assert f"<resumed xmlns='{SM}' previd='{previd}' h='1'/>" in resumed, resumed
    again.close()
    await logout(b)
