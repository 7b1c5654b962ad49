"""The container image of scripts/build-image.sh (buildah, from `scratch`,
no registry): built from the already-built binary, then run.

`podman run` is refused on our machines (`crun: setrlimit RLIMIT_NPROC:
Operation not permitted`), so the test runs the image's own filesystem
instead: `buildah mount` gives its root, and `chroot` runs the image's
entrypoint and command there, as the image's user, with the image's
environment and working directory, all read from the image's configuration.
The process sees nothing of the host's files (the image has no /proc or
/dev, and needs none); it shares the host's kernel and network, which is
why its listeners are put on free loopback ports. The test's name says so."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import urllib.request
import uuid

import pytest

from conftest import BIN, REPO, free_ports
from waiting import wait_until

pytestmark = [
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed (apt-get install buildah)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah mount and chroot need root"),
    pytest.mark.skipif(shutil.which("chroot") is None, reason="no chroot"),
]


def buildah(*args) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True, timeout=300).stdout.strip()


@pytest.fixture
def image():
    name = f"localhost/starling-test-{uuid.uuid4().hex[:10]}:test"
    built = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh"), name],
        env={**os.environ, "STARLING_BIN": BIN},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rmi", "--force", name], capture_output=True, timeout=120)


@pytest.fixture
def mounted(image):
    container = buildah("from", "--name", f"starling-test-{uuid.uuid4().hex[:10]}", image)
    try:
        yield pathlib.Path(buildah("mount", container)), json.loads(buildah("inspect", "--type", "image", image))
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, timeout=60)
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=60)


def test_image_entrypoint_run_with_chroot_in_the_image_filesystem_answers_readyz(mounted, tmp_path):
    root, inspected = mounted
    config = inspected["OCIv1"]["config"]
    entrypoint, command = config["Entrypoint"], config.get("Cmd") or []
    user, workdir = config["User"], config["WorkingDir"]
    assert entrypoint == ["/usr/local/bin/starling"] and command == ["serve"]
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0, "the image runs as a non-root user"
    assert f"starling:x:{uid}:{gid}:" in (root / "etc/passwd").read_text()
    # No shell, no package manager: only the binary, its libraries and the loader.
    for shell in ("bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"):
        assert not (root / shell).exists(), shell
    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    assert "usr/local/bin/starling" in files
    assert all(f == "usr/local/bin/starling" or f.startswith(("etc/", "lib", "usr/lib")) for f in files), files

    c2s, c2s_tls, http = free_ports(3)
    environment = dict(entry.split("=", 1) for entry in config.get("Env") or [])
    environment.update(
        {
            # Loopback ports of our own: the chroot shares the host's network.
            "STARLING_LISTEN_C2S": f"127.0.0.1:{c2s}",
            "STARLING_LISTEN_C2S_TLS": f"127.0.0.1:{c2s_tls}",
            "STARLING_LISTEN_HTTP": f"127.0.0.1:{http}",
        }
    )
    log = open(tmp_path / "starling.log", "w+")

    def enter_the_image():
        # What a container runtime does, less the namespaces: the image's
        # root, its working directory, then its user (groups first).
        os.chroot(root)
        os.chdir(workdir)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    process = subprocess.Popen(
        entrypoint + command,
        env=environment,
        preexec_fn=enter_the_image,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        def ready():
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"starling exited with {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as response:
                    return response.status == 200
            except OSError:  # refused, or an HTTPError (503): not ready yet
                return False

        wait_until(ready, timeout=60, what="/readyz of the image's entrypoint")
        status = pathlib.Path(f"/proc/{process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(uid)] * 4, uid_line
        # The SQLite database is in the image's data directory, which the
        # image's user owns (the rest of the filesystem may be read-only).
        data_dir = environment["STARLING_DATA_DIR"]
        assert (root / data_dir.lstrip("/") / "starling.db").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
