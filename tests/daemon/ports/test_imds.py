"""IMDSv2 against a strict server of our own: tokens, refresh, 401 recovery, notices."""
from __future__ import annotations

import pytest

from daemon.ports.imds import Imds, ImdsError


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def monotonic(self):
        return self.t


def test_identity_and_no_notice(imds):
    client = Imds(imds.url)
    assert client.identity()["instanceType"] == "g5.xlarge"
    assert client.spot_action() is None and client.rebalance() is None
    assert [r[:2] for r in imds.requests].count(("PUT", "/latest/api/token")) == 1  # the token is reused


def test_interruption_notice_appears(imds):
    client = Imds(imds.url)
    assert client.spot_action() is None
    imds.announce_interruption("terminate")
    notice = client.spot_action()
    assert notice["action"] == "terminate" and notice["time"].endswith("Z")
    imds.rebalance = {"noticeTime": "2026-11-25T15:00:00Z"}
    assert client.rebalance() == {"noticeTime": "2026-11-25T15:00:00Z"}


def test_token_refreshed_before_it_expires():
    from imds_server import ImdsServer

    server = ImdsServer()
    clock = FakeClock()
    client = Imds(server.url, clock=clock, token_ttl=600)
    client.identity()
    clock.t = 550  # within a minute of expiry: renewed before use
    client.identity()
    server.close()
    assert [r[:2] for r in server.requests].count(("PUT", "/latest/api/token")) == 2


def test_401_gets_a_new_token_not_a_crash(imds, fault_report):
    client = Imds(imds.url)
    client.identity()
    imds.revoke_tokens()
    assert client.identity()["instanceId"] == "i-0123456789abcdef0"
    statuses = [r[2] for r in imds.requests if r[0] == "GET"]
    assert statuses == [200, 401, 200]
    fault_report("IMDS token revoked (401): a new token and one retry, no crash")


def test_not_on_ec2_is_a_clear_error_fast(fault_report):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImdsError, match=f"127.0.0.1:{port}"):
        Imds(f"http://127.0.0.1:{port}", timeout=0.5).identity()
    fault_report("IMDS unreachable: a clear ImdsError naming the address, at once")


def test_server_error_is_an_imds_error(imds):
    imds.fail_with = 500
    with pytest.raises(ImdsError, match="answered 500"):
        Imds(imds.url).spot_action()


# -- hostile answers: each is "unknown" (ImdsError) within the deadline, never a library's exception

def _within(seconds: float, fn):
    """fn's outcome (a value or the exception it raised), or None if it is still running after `seconds`."""
    import threading

    out: list = []

    def run():
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - the outcome is what the test looks at
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return out[0] if out else None


@pytest.mark.parametrize("token", [False, True], ids=["get", "token"])
def test_a_dripping_reply_is_unknown_within_the_deadline(imds, token, fault_report):
    """Headers at once, then a byte every 0.5 s: urllib's timeout is per read and never tripped."""
    import time

    imds.set_fault("slow", token=token)
    started = time.monotonic()
    outcome = _within(15, Imds(imds.url, timeout=1.0).identity)
    assert outcome is not None, "identity() still reading a dripping reply after 15 s"
    assert isinstance(outcome, ImdsError) and "within 1" in str(outcome)
    assert time.monotonic() - started < 5  # one deadline per request, not per byte
    fault_report(f"IMDS dripping a byte every 0.5 s ({'token' if token else 'GET'}): ImdsError after "
                 f"{time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("kind, says", [("short", "cut short"), ("undecodable", "not UTF-8")])
@pytest.mark.parametrize("token", [False, True], ids=["get", "token"])
def test_a_short_or_undecodable_reply_is_unknown(imds, kind, says, token):
    imds.set_fault(kind, token=token)
    client = Imds(imds.url, timeout=1.0)
    for call in (client.identity, client.spot_action, client.rebalance):
        with pytest.raises(ImdsError, match=says):
            call()
    imds.clear_faults()
    assert client.identity()["instanceId"] == "i-0123456789abcdef0"  # and it answers again once IMDS does


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_a_huge_reply_is_refused_without_reading_it(imds, declared):
    imds.huge_bytes, imds.huge_declared = 200 * 2**20, declared
    imds.set_fault("huge")
    with pytest.raises(ImdsError, match="over 64 KiB"):
        Imds(imds.url, timeout=5.0).identity()
    # the client stops at the cap; what got onto the wire is what the socket buffers took
    assert imds.sent_bytes < 64 * 2**20


def test_a_huge_reply_costs_no_memory(imds, tmp_path, fault_report):
    """In a process of its own, so its peak RSS is the client's alone: an 800 MiB reply was read
    whole (and decoded: 1.6 GB) at each retry."""
    import subprocess
    import sys

    imds.huge_bytes = 200 * 2**20
    imds.set_fault("huge")
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (pytest's) into ru_maxrss across exec
    code = ("import sys\n"
            "from daemon.ports.imds import Imds, ImdsError\n"
            "for _ in range(3):\n"
            "    try: Imds(sys.argv[1], timeout=30.0).identity()\n"
            "    except ImdsError as e: print(e)\n"
            "print([int(x.split()[1]) // 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0])\n")
    out = subprocess.run([sys.executable, "-c", code, imds.url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mib = int(out.stdout.split()[-1])
    assert out.stdout.count("over 64 KiB") == 3
    assert peak_mib < 80, f"peak RSS {peak_mib} MiB for a refused 200 MiB reply"
    fault_report(f"IMDS replying 200 MiB (three tries): refused at 64 KiB, client peak RSS {peak_mib} MiB")


@pytest.mark.parametrize("body", ["[" * 30_000 + "]" * 30_000, "1" * 50_000, '{"instanceId": 7}'],
                         ids=["deep", "long-int", "typed"])
def test_json_that_python_cannot_hold_is_unknown(imds, body):
    imds.identity = body  # a str route is served as it is
    with pytest.raises(ImdsError, match="not JSON|no instance identity"):
        Imds(imds.url).identity()


def test_a_token_that_is_not_a_header_value_is_unknown(imds, monkeypatch):
    """A token with a newline would be a header injection; http.client raises ValueError on it."""
    import uuid

    monkeypatch.setattr(uuid, "uuid4", lambda: type("U", (), {"hex": "abc\r\nX-Evil: 1"})())
    with pytest.raises(ImdsError, match="token"):
        Imds(imds.url).identity()
