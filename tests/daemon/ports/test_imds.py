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
