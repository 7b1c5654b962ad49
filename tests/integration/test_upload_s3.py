"""HTTP File Upload (XEP-0363) with the files in an S3-compatible bucket
(`upload.storage = "s3://BUCKET/PREFIX"`): a real S3 API server on
loopback (moto's server), slixmpp's xep_0363 upload, a GET of the same
bytes, the object in the bucket under `PREFIX/files/ID` and nothing else
(no staged object, no multipart upload left open); refused and broken PUTs
leave nothing; expiry removes the object; two connection-managers share the
bucket."""

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

import boto3
import pytest
from slixmpp.exceptions import IqError

from conftest import free_port, login, logout, wait_until, wait_until_async
from test_cluster import Cluster
from test_upload import UploadServer, metric, refused, request, slot, upload_client

ACCESS_KEY = "starling-test"
SECRET_KEY = "starling-test-secret"


class Moto:
    """moto's S3 API server on a loopback port."""

    def __init__(self, directory):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "moto.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

        def listening():
            assert self.process.poll() is None, "moto exited"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout=30, what="moto's server")
        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )

    def bucket(self):
        name = f"starling-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket):
        return sorted(item["Key"] for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", []))

    def open_multipart_uploads(self, bucket):
        return self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def moto(tmp_path):
    server = Moto(tmp_path)
    yield server
    server.stop()


def s3_toml(moto, bucket, extra=""):
    return (
        f'storage = "s3://{bucket}/chat/uploads/"\ns3_endpoint = "{moto.endpoint}"\n'
        f's3_allow_http = true\ns3_region = "us-east-1"\n'
        f's3_access_key_id = "{ACCESS_KEY}"\ns3_secret_access_key = "{SECRET_KEY}"\n{extra}'
    )


@pytest.fixture
def s3_server(tmp_path, moto):
    started = []

    def make(extra=""):
        bucket = moto.bucket()
        srv = UploadServer(tmp_path, s3_toml(moto, bucket, extra)).start()
        started.append(srv)
        return srv, bucket

    yield make
    for srv in started:
        srv.stop()


def slot_id(url):
    return urllib.parse.urlsplit(url).path.split("/")[2]


async def test_slixmpp_uploads_to_the_bucket_and_another_user_downloads(s3_server, moto):
    server, bucket = s3_server()
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    # Over one 5 MiB part: a multipart upload of two parts.
    content = os.urandom(7 * 1024 * 1024 + 12345)
    url = await a.plugin["xep_0363"].upload_file(
        "clip.mp4", size=len(content), content_type="video/mp4", input_file=io.BytesIO(content),
        timeout=30,
    )
    status, headers, body = request("GET", url)
    assert status == 200 and body == content
    assert headers["content-type"] == "video/mp4"
    assert headers["content-length"] == str(len(content))
    status, headers, body = request("HEAD", url)
    assert status == 200 and body == b"" and headers["content-length"] == str(len(content))
    # The object, named by the slot id only, and nothing staged left over.
    key = f"chat/uploads/files/{slot_id(url)}"
    assert moto.keys(bucket) == [key]
    assert moto.client.get_object(Bucket=bucket, Key=key)["Body"].read() == content
    assert moto.open_multipart_uploads(bucket) == []
    assert metric(server, "starling_upload_received_bytes_total") == len(content)

    # A small file: one part.
    put_url, put_headers, get_url = await slot(a, "note.txt", 11, "text/plain")
    assert request("PUT", put_url, b"hello world", put_headers)[0] == 201
    assert request("GET", get_url)[2] == b"hello world"
    assert len(moto.keys(bucket)) == 2
    await logout(a)


async def test_refused_and_broken_puts_leave_nothing_in_the_bucket(s3_server, moto):
    server, bucket = s3_server()
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    put_url, put_headers, get_url = await slot(a, "a.bin", 1000)
    # Oversize: refused from the head, before a byte is read.
    assert request("PUT", put_url, b"x" * 2000, put_headers)[0] == 413
    # A body that ends early: the multipart upload is aborted.
    parsed = urllib.parse.urlsplit(put_url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        head = f"PUT {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Length: 1000\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in put_headers.items()) + "\r\n"
        sock.sendall(head.encode() + b"y" * 500)
        time.sleep(0.5)
    await wait_until_async(
        lambda: metric(server, 'starling_upload_puts_total{outcome="incomplete"}') == 1,
        timeout=15, what="the broken PUT to end")
    assert metric(server, 'starling_upload_puts_total{outcome="too_large"}') == 1
    assert request("GET", get_url)[0] == 404
    assert moto.keys(bucket) == []
    assert moto.open_multipart_uploads(bucket) == []
    # The slot is still good for a whole body.
    assert request("PUT", put_url, b"z" * 1000, put_headers)[0] == 201
    assert request("GET", get_url)[2] == b"z" * 1000
    assert request("PUT", put_url, b"z" * 1000, put_headers)[0] == 409
    assert len(moto.keys(bucket)) == 1
    await logout(a)


async def test_expired_objects_are_removed_from_the_bucket(s3_server, moto):
    server, bucket = s3_server("max_file_bytes = 1000\nquota_bytes = 1000\nexpire_after_secs = 3\n")
    alice, alice_pw = server.add_user("alice")
    a = await upload_client(server, alice, alice_pw)
    put_url, put_headers, get_url = await slot(a, "a.bin", 1000)
    assert request("PUT", put_url, b"a" * 1000, put_headers)[0] == 201
    assert request("GET", get_url)[0] == 200
    assert len(moto.keys(bucket)) == 1
    error = await refused(a, "b.bin", 1000)
    assert error.find("{urn:ietf:params:xml:ns:xmpp-stanzas}resource-constraint") is not None
    await wait_until_async(lambda: moto.keys(bucket) == [], timeout=15, what="the sweep to remove the object")
    assert request("GET", get_url)[0] == 404
    assert metric(server, "starling_upload_expired_files_total") == 1
    # The quota is free again once the storage service purged the slot row
    # (its own sweep, on the same schedule as the objects').
    deadline = time.monotonic() + 15
    while True:
        try:
            put_url, put_headers, _ = await slot(a, "b.bin", 1000)
            break
        except IqError:
            assert time.monotonic() < deadline, "the quota was not freed"
            await asyncio.sleep(0.3)
    assert request("PUT", put_url, b"b" * 1000, put_headers)[0] == 201
    await logout(a)


def test_bad_s3_settings_are_refused_naming_the_key(tmp_path, moto):
    for extra, key in [
        ('storage = "s3://Bad_Bucket"\n', "upload.storage"),
        ('storage = "s3://bucket/a//b"\n', "upload.storage"),
        ('storage = "gs://bucket"\n', "upload.storage"),
        (f'storage = "s3://bucket"\ns3_endpoint = "{moto.endpoint}"\n', "upload.s3_endpoint"),
        ('storage = "s3://bucket"\ns3_access_key_id = "k"\n', "upload.s3_secret_access_key"),
        ('s3_region = "eu-west-1"\n', "upload.s3_region"),
    ]:
        server = UploadServer(tmp_path, extra)
        server.write_config()
        result = server.cli("config", "check", check=False)
        assert result.returncode == 64, (extra, result)
        assert key in result.stderr, (extra, result.stderr)


async def test_two_connection_managers_share_the_bucket(tmp_path, moto):
    bucket = moto.bucket()
    c = Cluster(tmp_path)
    c.env["STARLING_UPLOAD_PUBLIC_URL"] = f"http://127.0.0.1:{c.base + 52}"
    c.env["STARLING_UPLOAD_STORAGE"] = f"s3://{bucket}/cluster"
    c.env["STARLING_UPLOAD_S3_ENDPOINT"] = moto.endpoint
    c.env["STARLING_UPLOAD_S3_ALLOW_HTTP"] = "true"
    # Credentials from the standard AWS environment variables.
    c.env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    c.env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    c.env["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        c.up()
        cm1 = c.processes["cm-1"]["http"]
        cm2 = c.processes["cm-2"]["http"]
        alice, alice_pw = c.add_user("alice")
        a = await upload_client(c.node("cm-1"), alice, alice_pw)
        content = os.urandom(100_000)
        put_url, put_headers, get_url = await slot(a, "report.pdf", len(content), "application/pdf")
        assert request("PUT", put_url.replace(cm1, cm2), content, put_headers)[0] == 201
        for node in (cm1, cm2):
            status, headers, body = request("GET", get_url.replace(cm1, node))
            assert status == 200 and body == content and headers["content-type"] == "application/pdf"
        assert moto.keys(bucket) == [f"cluster/files/{slot_id(get_url)}"]
        assert request("PUT", put_url, content, put_headers)[0] == 409
        await logout(a)
    finally:
        c.down()
