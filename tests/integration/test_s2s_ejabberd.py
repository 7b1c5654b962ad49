"""Federation with a real ejabberd from Debian (23.01): a slixmpp user on
Starling and one on ejabberd exchange messages and a presence subscription
in both directions, like test_s2s.py does with Prosody.

ejabberd runs as its own user from a directory of the test's, on loopback
only; it reaches `starling.test` through the Erlang resolver configuration
of that directory (`inetrc`: a name server of the test on loopback that
knows the A record of starling.test and nothing else), Starling reaches it through
`s2s.hosts`. Certificates come from the test CA of test_s2s.py."""

import os
import pathlib
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import uuid

import pytest

from conftest import Client, free_ports, login, logout, wait_until
from test_s2s import (
    SECRET,
    STARLING_DOMAIN,
    FederatedStarling,
    loopback_addresses,
    metric,
    write_test_pki,
)

EJABBERD_DOMAIN = "ejabberd.test"

pytestmark = pytest.mark.skipif(
    shutil.which("ejabberdctl") is None, reason="ejabberd is not installed (scripts/test.sh installs it)"
)


class LoopbackDns:
    """A name server on a free loopback UDP port for ejabberd's resolver:
    for each domain of `records` an `_xmpp-server._tcp` SRV record naming
    the domain itself on port 5269 and its A record; NXDOMAIN for any other
    name (`_xmpps-server._tcp`)."""

    def __init__(self, records):
        self.records = records
        self.asked = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @staticmethod
    def question(query):
        labels, offset = [], 12
        while query[offset]:
            length = query[offset]
            labels.append(query[offset + 1 : offset + 1 + length].decode().lower())
            offset += 1 + length
        qtype = struct.unpack("!H", query[offset + 1 : offset + 3])[0]
        return ".".join(labels), qtype, offset + 5

    def answer(self, query):
        name, qtype, end = self.question(query)
        self.asked.append((name, qtype))
        header = bytearray(query[:12])
        header[2] = 0x81 | (query[2] & 0x01)  # a response, recursion desired copied
        address = self.records.get(name)
        srv_target = name.split("_xmpp-server._tcp.", 1)[1] if name.startswith("_xmpp-server._tcp.") else None
        if qtype == 33 and srv_target in self.records:
            # RFC 2782: priority, weight, port 5269, the target's labels.
            target = b"".join(bytes([len(label)]) + label.encode() for label in srv_target.split(".")) + b"\0"
            rdata = struct.pack("!HHH", 0, 0, 5269) + target
            header[3] = 0x80
            header[6:8] = struct.pack("!H", 1)
            record = struct.pack("!HHHLH", 0xC00C, 33, 1, 60, len(rdata)) + rdata
            return bytes(header[:8]) + b"\0\0\0\0" + query[12:end] + record
        if qtype == 1 and address:
            header[3] = 0x80  # recursion available, no error
            header[6:8] = struct.pack("!H", 1)
            record = struct.pack("!HHHLH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
            return bytes(header[:8]) + b"\0\0\0\0" + query[12:end] + record
        # A known name without a record of that type: no error, no answer
        # (NODATA); an unknown name: NXDOMAIN.
        header[3] = 0x80 if address else 0x83
        return bytes(header[:6]) + b"\0\0\0\0\0\0" + query[12:end]

    def serve(self):
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(query), peer)
            except (OSError, IndexError, struct.error, UnicodeDecodeError):
                continue

    def close(self):
        self.sock.close()


class Ejabberd:
    """An ejabberd node serving `ejabberd.test`."""

    def __init__(self, address, starling_address, pki: pathlib.Path):
        # A directory the ejabberd user can reach (pytest's are private to root).
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="starling-ejabberd-"))
        self.dns = LoopbackDns({STARLING_DOMAIN: starling_address})
        self.address = address
        self.c2s, self.s2s = free_ports(2)
        (self.dir / "spool").mkdir()
        (self.dir / "logs").mkdir()
        combined = (pki / f"{EJABBERD_DOMAIN}.crt").read_text() + (pki / f"{EJABBERD_DOMAIN}.key").read_text()
        (self.dir / "combined.pem").write_text(combined)
        shutil.copy(pki / "ca.pem", self.dir / "ca.pem")
        (self.dir / "ejabberd.yml").write_text(
            f"""
hosts:
  - {EJABBERD_DOMAIN}
loglevel: info
log_rotate_count: 0
certfiles:
  - "{self.dir / 'combined.pem'}"
ca_file: "{self.dir / 'ca.pem'}"
s2s_use_starttls: required
listen:
  -
    port: {self.c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
  -
    port: {self.s2s}
    ip: "{address}"
    module: ejabberd_s2s_in
auth_method: internal
acl:
  local:
    user_regexp: ""
access_rules:
  c2s:
    allow: all
  s2s:
    allow: all
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_s2s_dialback: {{}}
"""
        )
        self.node = f"ejabberd{uuid.uuid4().hex[:8]}@localhost"
        (self.dir / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={self.node}\nERL_EPMD_ADDRESS=127.0.0.1\nINET_DIST_INTERFACE=127.0.0.1\n"
        )
        # Erlang's resolver: the test's name server (for the SRV records)
        # and host table, not the system's resolv.conf nor hosts file.
        (self.dir / "inetrc").write_text(
            '{resolv_conf,""}.\n{hosts_file,""}.\n'
            f'{{lookup,["file","dns"]}}.\n{{host,{{127,0,0,1}}, ["localhost"]}}.\n'
            f'{{host,{{{",".join(starling_address.split("."))}}}, ["{STARLING_DOMAIN}"]}}.\n'
            f'{{nameserver,{{127,0,0,1}},{self.dns.port}}}.\n'
        )
        user = pwd.getpwnam("ejabberd")
        for path in [self.dir, *self.dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o755)
        self.process = None

    def ctl(self, *args, check=True):
        return subprocess.run(
            self.as_ejabberd("ejabberdctl", "--config-dir", str(self.dir), "--spool", str(self.dir / "spool"),
                             "--logs", str(self.dir / "logs"), *args),
            capture_output=True, text=True, timeout=60, env=self.env(), check=check,
        )

    def as_ejabberd(self, *command):
        return ["setpriv", "--reuid", "ejabberd", "--regid", "ejabberd", "--init-groups", *command]

    def env(self):
        return {**os.environ, "HOME": str(self.dir), "ERL_INETRC": str(self.dir / "inetrc")}

    def start(self):
        self.out = open(self.dir / "server.out", "ab")
        self.process = subprocess.Popen(
            self.as_ejabberd("ejabberdctl", "--config-dir", str(self.dir), "--spool", str(self.dir / "spool"),
                             "--logs", str(self.dir / "logs"), "foreground"),
            stdout=self.out, stderr=subprocess.STDOUT, env=self.env(),
        )

        def listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"ejabberd exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.address, self.s2s), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout=90, interval=0.5, what="ejabberd's s2s listener")
        wait_until(lambda: self.ctl("status", check=False).returncode == 0, timeout=60, interval=0.5,
                   what="ejabberdctl status")
        return self

    def add_user(self, localpart, password):
        self.ctl("register", localpart, EJABBERD_DOMAIN, password)
        return f"{localpart}@{EJABBERD_DOMAIN}", password

    def log_text(self):
        texts = []
        for name in ["server.out", "logs/ejabberd.log", "logs/error.log"]:
            path = self.dir / name
            if path.exists():
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def stop(self):
        if self.process and self.process.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "out", None):
            self.out.close()
        if os.environ.get("STARLING_TEST_SHOW_LOGS"):
            print(self.log_text())
            print("dns queries:", self.dns.asked)
        self.dns.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def ejabberd_federation(tmp_path):
    started = []

    def make():
        starling_address, ejabberd_address = loopback_addresses(2)
        pki = tmp_path / "pki"
        pki.mkdir()
        write_test_pki(pki, [EJABBERD_DOMAIN, STARLING_DOMAIN])
        starling_dir = tmp_path / "starling"
        starling_dir.mkdir()
        for name in ["ca.pem", f"{STARLING_DOMAIN}.crt", f"{STARLING_DOMAIN}.key"]:
            shutil.copy(pki / name, starling_dir / name)
        ejabberd = Ejabberd(ejabberd_address, starling_address, pki)
        started.append(ejabberd)
        ejabberd.start()
        hosts = f'hosts = ["{EJABBERD_DOMAIN}={ejabberd_address}:{ejabberd.s2s}"]'
        starling = FederatedStarling(starling_dir, starling_address, hosts)
        started.append(starling.start())
        return starling, ejabberd

    yield make
    for process in reversed(started):
        process.stop()


async def ejabberd_login(ejabberd, jid, password):
    client = Client(jid, password)
    client.connect(host="127.0.0.1", port=ejabberd.c2s)
    import asyncio

    done, _ = await asyncio.wait([client.started, client.failed], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if client.failed in done or not done:
        client.disconnect()
        raise AssertionError(f"login of {jid} on ejabberd failed")
    await client.get_roster()
    client.send_presence()
    return client


@pytest.mark.asyncio
async def test_messages_and_a_subscription_request_reach_ejabberd_over_sasl_external(ejabberd_federation):
    """Starling's stream to ejabberd: STARTTLS, then SASL EXTERNAL (ejabberd
    trusts the test CA); a message and a subscription request from a
    Starling user reach the ejabberd user. (ejabberd's own stream to
    Starling does not open in this setup yet: its resolver answers
    `enoname` for starling.test although the test's name server answers
    the SRV record; see docs/features.md.)"""
    starling, ejabberd = ejabberd_federation()
    romeo_jid, romeo_password = starling.add_user("romeo")
    juliet_jid, juliet_password = ejabberd.add_user("juliet", "juliet-pass")
    romeo = await login(starling, romeo_jid, romeo_password)
    juliet = await ejabberd_login(ejabberd, juliet_jid, juliet_password)
    try:
        romeo.send_message(mto=juliet_jid, mbody="hello from starling", mtype="chat")
        received = await juliet.next_message(timeout=30)
        assert received["body"] == "hello from starling" and received["from"].bare == romeo_jid
        romeo.send_presence(pto=juliet_jid, ptype="subscribe")
        asked = await juliet.next_presence(lambda p: p["type"] == "subscribe", timeout=30)
        assert asked["from"].bare == romeo_jid
        assert metric(starling, "starling_s2s_stanzas_total", outcome="sent") >= 2
        assert metric(starling, "starling_s2s_streams_total", direction="out", outcome="external") >= 1
        assert "Accepted inbound s2s EXTERNAL authentication starling.test -> ejabberd.test" in ejabberd.log_text()
    finally:
        await logout(romeo, juliet)
