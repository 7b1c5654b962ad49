"""HTTP File Upload (XEP-0363): slixmpp's xep_0363 plugin uploads a file in
`starling serve` and another user downloads the same bytes; every refused
slot request gets the error the XEP names; every refused PUT its HTTP
status, a 1 GB body against a 10 MB slot is cut off without the server
reading it; expiry removes files and frees the quota; across two
connection-managers a slot asked for through cm-1 is PUT on cm-2 and read
back from cm-1 (one shared directory)."""

import asyncio
import http.client
import io
import os
import re
import socket
import time
import urllib.parse
import urllib.request

import pytest
from slixmpp.exceptions import IqError

from conftest import Server, insecure_context, login, logout, wait_until, wait_until_async
from test_blocking import rss_kib
from test_cluster import Cluster

UPLOAD_NS = "urn:xmpp:http:upload:0"


class UploadServer(Server):
    """`starling serve` whose upload URLs point at its plain HTTP listener
    (the port is only known when the configuration is written)."""

    def __init__(self, tmp_path, upload_toml=""):
        super().__init__(tmp_path)
        self.upload_toml = upload_toml

    def write_config(self):
        self.extra_toml = f'[upload]\npublic_url = "http://localhost:{self.http}"\n{self.upload_toml}'
        super().write_config()

    @property
    def upload_dir(self):
        return self.dir / "data" / "upload"


@pytest.fixture
def upload_factory(tmp_path):
    started = []

    def make(upload_toml=""):
        directory = tmp_path / f"server{len(started)}"
        directory.mkdir()
        srv = UploadServer(directory, upload_toml).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


async def upload_client(server, jid, password, resource="up"):
    client = await login(server, jid, password, resource)
    client.register_plugin("xep_0363")
    return client


def request(method, url, body=None, headers=None, context=None):
    """One HTTP request; returns (status, headers, body)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        connection = http.client.HTTPSConnection(parsed.hostname, parsed.port, timeout=30, context=context)
    else:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request(method, parsed.path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


async def slot(client, filename, size, content_type=None):
    """A granted slot: (put url, put headers, get url)."""
    iq = await client.plugin["xep_0363"].request_slot(
        client.boundjid.domain and f"upload.{client.boundjid.domain}", filename, size, content_type, timeout=10
    )
    element = iq.xml.find(f"{{{UPLOAD_NS}}}slot")
    put = element.find(f"{{{UPLOAD_NS}}}put")
    headers = {header.get("name"): header.text for header in put.findall(f"{{{UPLOAD_NS}}}header")}
    # slixmpp asks for application/octet-stream when given no type.
    headers["Content-Type"] = content_type or "application/octet-stream"
    return put.get("url"), headers, element.find(f"{{{UPLOAD_NS}}}get").get("url")


async def refused(client, filename, size, content_type=None):
    """The <error/> element of a refused slot request."""
    with pytest.raises(IqError) as caught:
        await client.plugin["xep_0363"].request_slot(
            f"upload.{client.boundjid.domain}", filename, size, content_type, timeout=10
        )
    return caught.value.iq.xml.find("{jabber:client}error")


def metric(server, line_start):
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stored_files(directory):
    return sorted(path for path in (directory / "files").rglob("*") if path.is_file())


async def test_slixmpp_uploads_a_file_that_another_user_downloads(upload_factory):
    server = upload_factory()
    alice, alice_pw = server.add_user("alice")
    bob, bob_pw = server.add_user("bob")
    a = await upload_client(server, alice, alice_pw)
    b = await login(server, bob, bob_pw, "phone")

    # XEP-0363 section 3: the service is in the server's items, with its
    # feature and the max-file-size form.
    items = await a.plugin["xep_0030"].get_items(jid="localhost", timeout=10)
    assert ("upload.localhost", None, "HTTP File Upload") in items["disco_items"]["items"]
    info = await a.plugin["xep_0030"].get_info(jid="upload.localhost", timeout=10)
    assert UPLOAD_NS in info["disco_info"]["features"]
    assert ("store", "file", None, "HTTP File Upload") in info["disco_info"]["identities"]
    form = info["disco_info"].iterables[0]
    assert form["values"]["max-file-size"] == str(10 * 1024 * 1024)

    content = os.urandom(300_000)
    url = await a.plugin["xep_0363"].upload_file(
        "photo of us.jpg", size=len(content), content_type="image/jpeg", input_file=io.BytesIO(content), timeout=10
    )
    assert re.fullmatch(rf"http://localhost:{server.http}/upload/[0-9a-f]{{32}}/photo%20of%20us\.jpg", url), url
    a.send_message(mto=bob, mbody=url, mtype="chat")
    received = (await b.next_message(timeout=10))["body"]

    status, headers, body = request("GET", received)
    assert status == 200 and body == content
    assert headers["content-type"] == "image/jpeg"
    assert headers["content-length"] == str(len(content))
    assert headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in headers["content-security-policy"]
    assert headers["content-disposition"].startswith('inline; filename="photo of us.jpg"')
    assert headers["access-control-allow-origin"] == "*"
    status, headers, body = request("HEAD", received)
    assert status == 200 and body == b"" and headers["content-length"] == str(len(content))
    # The same file over the HTTPS listener.
    secure = received.replace(f"http://localhost:{server.http}", f"https://localhost:{server.https}")
    status, _, body = request("GET", secure, context=insecure_context())
    assert status == 200 and body == content
    # A browser's preflight (Converse.js uploads from another origin).
    status, headers, _ = request("OPTIONS", url, headers={
        "Origin": "https://web.example", "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert status == 204
    assert "PUT" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    assert headers["access-control-allow-origin"] == "*"

    assert len(stored_files(server.upload_dir)) == 1
    assert metric(server, 'starling_upload_slots_total{outcome="granted"}') == 1
    assert metric(server, 'starling_upload_puts_total{outcome="completed"}') == 1
    assert metric(server, "starling_upload_received_bytes_total") == len(content)
    await logout(a, b)


async def test_refused_slot_requests_get_the_errors_the_xep_names(upload_factory):
    server = upload_factory("max_file_bytes = 1000\nquota_bytes = 2500\n")
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)

    # Section 5, example 6.
    error = await refused(a, "big.bin", 1001)
    assert error.get("type") == "modify"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}not-acceptable") is not None
    assert error.find(f"{{{UPLOAD_NS}}}file-too-large/{{{UPLOAD_NS}}}max-file-size").text == "1000"

    for size in ("0", "-1", "abc"):
        iq = a.make_iq_get(ito="upload.localhost")
        iq.append(ET_request("a.txt", size))
        with pytest.raises(IqError) as caught:
            await iq.send(timeout=10)
        assert caught.value.condition == "bad-request", size
    error = await refused(a, "a.txt", 10, "text/html\r\nX-Injected: 1")
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}bad-request") is not None

    # Quota: two pending 1000-byte slots fit in 2500, a third does not
    # (section 5, example 7: wait, resource-constraint, retry stamp).
    await slot(a, "one.txt", 1000)
    await slot(a, "two.txt", 1000)
    error = await refused(a, "three.txt", 1000)
    assert error.get("type") == "wait"
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None
    stamp = error.find(f"{{{UPLOAD_NS}}}retry").get("stamp")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp), stamp
    await slot(a, "small.txt", 500)

    # Nothing lives at the service's users or resources.
    with pytest.raises(IqError) as caught:
        await a.plugin["xep_0030"].get_info(jid="someone@upload.localhost", timeout=10)
    assert caught.value.condition == "service-unavailable"

    assert metric(server, 'starling_upload_slots_total{outcome="too_large"}') == 1
    assert metric(server, 'starling_upload_slots_total{outcome="bad_request"}') == 4
    assert metric(server, 'starling_upload_slots_total{outcome="quota"}') == 1
    assert metric(server, 'starling_upload_slots_total{outcome="granted"}') == 3
    await logout(a)


def ET_request(filename, size):
    from xml.etree import ElementTree
    return ElementTree.Element(f"{{{UPLOAD_NS}}}request", {"filename": filename, "size": size})


async def test_bad_puts_and_gets_are_refused(upload_factory):
    server = upload_factory("slot_validity_secs = 2\n")
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    content = b"hello, upload\n"

    put_url, put_headers, get_url = await slot(a, "hello.txt", len(content), "text/plain")
    good = put_headers
    # A slot's GET before its PUT: nothing there yet.
    assert request("GET", get_url)[0] == 404
    # Missing, wrong and forged tokens.
    assert request("PUT", put_url, content, {"Content-Type": "text/plain"})[0] == 403
    assert put_headers["Authorization"].startswith("Bearer ")
    assert request("PUT", put_url, content, {**good, "Authorization": "Bearer " + "0" * 64})[0] == 403
    assert request("PUT", put_url, content, {**good, "Authorization": "Basic " + "0" * 64})[0] == 403
    forged = re.sub(r"/upload/[0-9a-f]{32}/", "/upload/" + "a" * 32 + "/", put_url)
    assert request("PUT", forged, content, good)[0] == 404
    # The name is part of the URL.
    assert request("PUT", put_url.rsplit("/", 1)[0] + "/other.txt", content, good)[0] == 404
    # Size and type checked against the slot (section 5).
    assert request("PUT", put_url, content + b"!", good)[0] == 413
    assert request("PUT", put_url, content[:-1], good)[0] == 400
    assert request("PUT", put_url, content, {**good, "Content-Type": "text/html"})[0] == 415
    chunked = http.client.HTTPConnection("127.0.0.1", server.http, timeout=10)
    chunked.request("PUT", urllib.parse.urlsplit(put_url).path, body=iter([content]), headers=good,
                    encode_chunked=True)
    assert chunked.getresponse().status == 411
    chunked.close()
    # Nothing above stored anything.
    assert stored_files(server.upload_dir) == []

    assert request("PUT", put_url, content, good)[0] == 201
    # Used once: a second PUT (a replay) is refused, the file stays.
    assert request("PUT", put_url, b"x" * len(content), good)[0] == 409
    status, headers, body = request("GET", get_url)
    assert status == 200 and body == content
    assert headers["content-disposition"].startswith('attachment; filename="hello.txt"')

    # An expired slot (upload.slot_validity_secs = 2).
    put_url, put_headers, _ = await slot(a, "late.txt", 4)
    time.sleep(2.5)
    assert request("PUT", put_url, b"late", put_headers)[0] == 403

    # Path tricks: the name is cleaned, and only hex ids name files.
    for name, expected in [("../../../etc/passwd", "passwd"), ("..", "file"), ("a/b\\c.txt", "c.txt"),
                           ("evil\u202egpj.exe", "evilgpj.exe"), ("x" * 5000 + ".png", None)]:
        put_url, put_headers, get_url = await slot(a, name, 2)
        last = urllib.parse.unquote(put_url.rsplit("/", 1)[1])
        if expected:
            assert last == expected, (name, last)
        else:
            assert len(last.encode()) <= 128 and last.endswith(".png")
        assert request("PUT", put_url, b"ok", put_headers)[0] == 201
        assert request("GET", get_url)[1].get("content-type") == "application/octet-stream"
    # Bytes whatever their claimed type: no type asked, none enforced, served as octets.
    iq = a.make_iq_get(ito="upload.localhost")
    iq.append(ET_request("any.bin", "2"))
    element = (await iq.send(timeout=10)).xml.find(f"{{{UPLOAD_NS}}}slot")
    put = element.find(f"{{{UPLOAD_NS}}}put")
    token = put.find(f"{{{UPLOAD_NS}}}header").text
    assert request("PUT", put.get("url"), b"ok", {"Authorization": token, "Content-Type": "text/html"})[0] == 201
    status, headers, _ = request("GET", element.find(f"{{{UPLOAD_NS}}}get").get("url"))
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    for path in ["/upload/../../etc/passwd", "/upload/%2e%2e/%2e%2e", "/upload/" + "0" * 32 + "/x",
                 "/upload/ZZZ/x", "/upload/" + "a" * 32 + "/..%2F..%2Fetc%2Fpasswd"]:
        connection = http.client.HTTPConnection("127.0.0.1", server.http, timeout=10)
        connection.request("GET", path)
        assert connection.getresponse().status == 404, path
        connection.close()
    for path in stored_files(server.upload_dir):
        assert re.fullmatch(r"[0-9a-f]{32}", path.name), path
        assert path.resolve().is_relative_to(server.upload_dir.resolve())

    assert metric(server, 'starling_upload_puts_total{outcome="bad_token"}') == 3
    assert metric(server, 'starling_upload_puts_total{outcome="expired"}') == 1
    assert metric(server, 'starling_upload_puts_total{outcome="used"}') == 1
    assert metric(server, 'starling_upload_puts_total{outcome="length_required"}') == 1
    assert metric(server, 'starling_upload_puts_total{outcome="content_type"}') == 1
    assert metric(server, 'starling_upload_gets_total{outcome="not_found"}') >= 5
    await logout(a)


async def test_a_1gb_body_against_a_10mb_slot_is_cut_off_early_in_bounded_memory(upload_factory):
    server = upload_factory()
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    put_url, put_headers, _ = await slot(a, "big.bin", 10 * 1024 * 1024, "application/octet-stream")
    rss_before = rss_kib(server.process.pid)

    def send_a_gigabyte():
        path = urllib.parse.urlsplit(put_url).path
        head = (f"PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {1 << 30}\r\n"
                f"Content-Type: application/octet-stream\r\nAuthorization: {put_headers['Authorization']}\r\n\r\n")
        sock = socket.create_connection(("127.0.0.1", server.http), timeout=30)
        sock.sendall(head.encode())
        chunk = b"\0" * (1 << 20)
        sent = 0
        try:
            while sent < (1 << 30):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        response = b""
        try:
            while b"\r\n" not in response:
                data = sock.recv(4096)
                if not data:
                    break
                response += data
        except OSError:
            pass
        sock.close()
        return sent, response

    sent, response = await asyncio.get_event_loop().run_in_executor(None, send_a_gigabyte)
    print(f"1 GB PUT: {sent >> 20} MiB sent before the cut, RSS {rss_kib(server.process.pid) - rss_before} KiB more")
    # Refused from the head alone: the connection closed long before 1 GB.
    assert sent < 64 * (1 << 20), sent
    assert response.startswith(b"HTTP/1.1 413") or response == b"", response
    assert metric(server, 'starling_upload_puts_total{outcome="too_large"}') == 1
    assert stored_files(server.upload_dir) == []
    assert list((server.upload_dir / "tmp").iterdir()) == []
    assert rss_kib(server.process.pid) - rss_before < 32 * 1024
    await logout(a)


async def test_expired_files_are_removed_and_their_quota_freed(upload_factory):
    server = upload_factory("max_file_bytes = 1000\nquota_bytes = 1000\nexpire_after_secs = 3\n")
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    put_url, put_headers, get_url = await slot(a, "a.bin", 1000)
    assert request("PUT", put_url, b"a" * 1000, put_headers)[0] == 201
    assert request("GET", get_url)[0] == 200
    error = await refused(a, "b.bin", 1000)
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None

    await wait_until_async(lambda: request("GET", get_url)[0] == 404, timeout=15, what="the file to expire")
    await wait_until_async(lambda: stored_files(server.upload_dir) == [], timeout=15,
                           what="the sweep to remove the file")
    # The sweep counts what it removed once its pass is over: a moment after the file went.
    await wait_until_async(lambda: metric(server, "starling_upload_expired_files_total") == 1,
                           timeout=15, what="the sweep to count the removed file")
    # The quota is free again.
    put_url, put_headers, _ = await slot(a, "b.bin", 1000)
    assert request("PUT", put_url, b"b" * 1000, put_headers)[0] == 201
    await logout(a)


async def test_a_slot_from_cm1_is_put_on_cm2_and_read_from_cm1(tmp_path):
    c = Cluster(tmp_path)
    # The routers write the URLs: those of cm-1's HTTP listener (base + 52
    # in deploy/local-cluster.sh); every process shares `data_dir/upload`.
    c.env["STARLING_UPLOAD_PUBLIC_URL"] = f"http://127.0.0.1:{c.base + 52}"
    try:
        c.up()
        cm1 = c.processes["cm-1"]["http"]
        cm2 = c.processes["cm-2"]["http"]
        assert cm1 == f"127.0.0.1:{c.base + 52}", cm1
        alice, alice_pw = c.add_user("alice")
        a = await upload_client(c.node("cm-1"), alice, alice_pw)
        content = os.urandom(100_000)
        put_url, put_headers, get_url = await slot(a, "report.pdf", len(content), "application/pdf")
        assert put_url.startswith(f"http://{cm1}/upload/")
        on_cm2 = put_url.replace(cm1, cm2)
        assert request("PUT", on_cm2, content, put_headers)[0] == 201
        status, headers, body = request("GET", get_url)
        assert status == 200 and body == content and headers["content-type"] == "application/pdf"
        # A replay on the other node is refused too: the slot is used cluster-wide.
        assert request("PUT", put_url, content, put_headers)[0] == 409
        # A too large request is refused by whichever router answers.
        error = await refused(a, "huge.bin", 11 * 1024 * 1024)
        assert error.find(f"{{{UPLOAD_NS}}}file-too-large") is not None
        await logout(a)
    finally:
        c.down()
