#!/usr/bin/env python3
"""Server CPU per login: SCRAM-SHA-256 vs SCRAM-SHA-256-PLUS (channel
binding) vs FAST tokens (XEP-0484), over STARTTLS and direct TLS
(docs/performance.md "Login CPU with channel binding").

It starts its own `starling serve` (SASL2 on, a temporary data directory,
free loopback ports), creates one account, and logs in `--logins` times per
scenario, one login after another. A login is: TCP connect, TLS (STARTTLS
from Python's ssl, or direct TLS through node's TLS for the tls-exporter
scenarios, tests/integration/tls_pipe.js), the stream header and features,
one SASL2 `<authenticate/>` (SCRAM: challenge and response; FAST: one round
trip) up to `<success/>`, then the connection is closed. The figure is the CPU
time (`/proc/PID/stat` utime + stime) the server process spent during the
scenario, divided by its logins; the clients' own CPU is not counted.

FAST logins rotate their token on every use (a token write per login): what
a real client pays. Run it with the test venv:

    /var/cache/starling-ci/venv/bin/python loadtest/login_cpu.py \\
        --bin target/release/starling --logins 300
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the starling binary")
    parser.add_argument("--logins", type=int, default=300, help="logins per STARTTLS scenario")
    parser.add_argument("--node-logins", type=int, default=100, help="logins per direct TLS (node) scenario")
    arguments = parser.parse_args()
    os.environ["STARLING_BIN"] = str(pathlib.Path(arguments.bin).resolve())

    import conftest
    from test_channel_binding import FAST, NODE, CbClient
    from test_sasl2 import issued_token

    conftest.BIN = os.environ["STARLING_BIN"]
    directory = pathlib.Path(tempfile.mkdtemp(prefix="starling-login-cpu-"))
    server = conftest.Server(
        directory,
        extra_toml="[sasl2]\nenabled = true\n[limits]\nmax_connections_per_ip = 4096\n",
    )
    server.write_config = _quiet(server.write_config, server)
    server.start()
    try:
        jid, password = server.add_user("bench", "bench-password")
        tokens = {}

        def connect(direct):
            return CbClient.direct_tls_client(server) if direct else CbClient.starttls_client(server)

        def scram(direct, plus):
            client = connect(direct)
            try:
                if plus:
                    cb_type = "tls-exporter" if direct else "tls-server-end-point"
                    header, data, mechanism = f"p={cb_type},,", client.cb_data(cb_type), "SCRAM-SHA-256-PLUS"
                else:
                    header, data, mechanism = "n,,", b"", "SCRAM-SHA-256"
                exchange = client.scram(jid, password, "sha256", header, data, profile="sasl2")
                name, outcome = client.sasl2(mechanism, exchange)
                assert name == "success", outcome
            finally:
                client.close()

        def fast(direct, mechanism):
            client = connect(direct)
            try:
                if mechanism not in tokens:
                    # The first token, from a password login on this connection's kind.
                    cb_type = "tls-exporter" if direct else "tls-server-end-point"
                    exchange = client.scram(
                        jid, password, "sha256", f"p={cb_type},,", client.cb_data(cb_type), profile="sasl2"
                    )
                    name, outcome = client.sasl2(
                        "SCRAM-SHA-256-PLUS", exchange, f"<request-token xmlns='{FAST}' mechanism='{mechanism}'/>"
                    )
                    assert name == "success", outcome
                    tokens[mechanism] = issued_token(outcome)[0]
                    return
                data = {
                    "HT-SHA-256-EXPR": lambda: client.cb_data("tls-exporter"),
                    "HT-SHA-256-ENDP": lambda: client.cb_data("tls-server-end-point"),
                    "HT-SHA-256-NONE": lambda: b"",
                }[mechanism]()
                from test_sasl2 import authenticate_fast

                name, outcome = authenticate_fast(client, jid, tokens[mechanism], mechanism=mechanism, cb_data=data)
                assert name == "success", outcome
                tokens[mechanism] = issued_token(outcome)[0]
            finally:
                client.close()

        scenarios = [
            ("STARTTLS, SCRAM-SHA-256", False, lambda: scram(False, False)),
            ("STARTTLS, SCRAM-SHA-256-PLUS (tls-server-end-point)", False, lambda: scram(False, True)),
            ("STARTTLS, FAST HT-SHA-256-NONE", False, lambda: fast(False, "HT-SHA-256-NONE")),
            ("STARTTLS, FAST HT-SHA-256-ENDP", False, lambda: fast(False, "HT-SHA-256-ENDP")),
        ]
        if NODE is not None:
            scenarios += [
                ("direct TLS, SCRAM-SHA-256", True, lambda: scram(True, False)),
                ("direct TLS, SCRAM-SHA-256-PLUS (tls-exporter)", True, lambda: scram(True, True)),
                ("direct TLS, FAST HT-SHA-256-EXPR", True, lambda: fast(True, "HT-SHA-256-EXPR")),
            ]
        pid = server.process.pid
        print(f"{'scenario':<55} {'logins':>7} {'server CPU us/login':>20} {'wall ms/login':>14}")
        for name, direct, login in scenarios:
            count = arguments.node_logins if direct else arguments.logins
            for _ in range(5):
                login()  # warm-up (and the first FAST token)
            before_cpu, before_wall = cpu_seconds(pid), time.monotonic()
            for _ in range(count):
                login()
            cpu = cpu_seconds(pid) - before_cpu
            wall = time.monotonic() - before_wall
            print(f"{name:<55} {count:>7} {cpu / count * 1e6:>20.0f} {wall / count * 1e3:>14.1f}")
    finally:
        server.stop()


def _quiet(write_config, server):
    """The server's config with warn-level logs (no per-login info lines)."""

    def write():
        write_config()
        server.config.write_text(server.config.read_text().replace('level = "info,starling=debug"', 'level = "warn"'))

    return write


if __name__ == "__main__":
    main()
