"""moto's server with its IAM enforcement taught the three things our policy relies on.

moto 5 checks a caller's access key, signature and the actions its policies allow, and S3's
bucket/object ARNs; its own notes say Resource and Condition are otherwise unsupported: every
EC2 call is checked against Resource "*", and a Condition whose key moto does not know fails
(as an explicit deny). Here, for this test server only:
  - an EC2 call naming an instance is checked against that instance's ARN;
  - the condition keys ec2:ResourceTag/<key> (and aws:ResourceTag/<key>) come from the
    instance's tags in moto's EC2 backend, ses:FromAddress from SendEmail's Source, s3:prefix
    from a listing's prefix, aws:RequestedRegion from the request's signing region;
  - StringEquals and StringLike are evaluated, a condition that does not hold makes an Allow
    statement not apply (as in AWS), and an explicit Deny still wins.

    INITIAL_NO_AUTH_ACTION_COUNT=1000000 python tests/moto_iam_server.py PORT
    (then POST /moto-api/reset-auth with body "0" turns enforcement on)
"""
from __future__ import annotations

import fnmatch
import sys
from urllib.parse import parse_qs, urlparse

from moto.iam import access_control as ac


def _values(data: dict, *names: str) -> list[str]:
    for name in names:
        value = data.get(name)
        if value:
            return list(value) if isinstance(value, (list, tuple)) else [value]
    return []


def _raw_from(data: dict) -> list[str]:
    """SendRawEmail without Source: the address in the raw message's From header."""
    import base64
    import email
    from email.utils import parseaddr

    raw = _values(data, "RawMessage.Data")
    if not raw:
        return []
    sender = email.message_from_bytes(base64.b64decode(raw[0]))["From"]
    return [parseaddr(sender)[1]] if sender else []


def _context(request: ac.IAMRequestBase, resource: str) -> tuple[str, dict[str, list[str]]]:
    service = request._service
    ctx: dict[str, list[str]] = {"aws:RequestedRegion": [request._region]}
    data = request._data or {}
    if service == "ec2":
        ids = _values(data, "InstanceId.1", "InstanceId")
        if ids:
            from moto.ec2.models import ec2_backends

            resource = f"arn:aws:ec2:{request._region}:{request.account_id}:instance/{ids[0]}"
            backend = ec2_backends[request.account_id][request._region]
            for key, value in (backend.tags.get(ids[0]) or {}).items():
                ctx[f"ec2:ResourceTag/{key}"] = ctx[f"aws:ResourceTag/{key}"] = [value]
    elif service in ("ses", "email"):
        ctx["ses:FromAddress"] = _values(data, "Source") or _raw_from(data)
    elif service == "s3":
        prefix = parse_qs(urlparse(request._path).query).get("prefix")
        if prefix is not None:
            ctx["s3:prefix"] = prefix
    return resource, ctx


def _condition_holds(conditions: dict, ctx: dict[str, list[str]]) -> bool:
    for operator, tests in conditions.items():
        match = {"StringEquals": lambda pat, v: v == pat, "StringLike": lambda pat, v: fnmatch.fnmatchcase(v, pat)}.get(
            operator)
        if match is None:
            raise ValueError(f"moto_iam_server: condition operator {operator} is not taught here")
        for key, expected in tests.items():
            expected = expected if isinstance(expected, list) else [expected]
            actual = ctx.get(key, [])
            if not any(match(pat, v) for pat in expected for v in actual):
                return False
    return True


def _statement_result(statement: dict, action: str, resource: str, ctx) -> ac.PermissionResult:
    s = ac.IAMPolicyStatement(statement)
    if "NotAction" in statement:
        concerned = not s._check_element_matches("NotAction", action)
    else:
        concerned = s._check_element_matches("Action", action)
    if not concerned or not s._check_element_matches("Resource", resource):
        return ac.PermissionResult.NEUTRAL
    if statement.get("Condition") and not _condition_holds(statement["Condition"], ctx):
        return ac.PermissionResult.NEUTRAL
    return ac.PermissionResult.PERMITTED if statement["Effect"] == "Allow" else ac.PermissionResult.DENIED


def check_action_permitted(self, resource: str) -> None:
    if self._action == "sts:GetCallerIdentity":
        return
    resource, ctx = _context(self, resource)
    permitted = False
    for policy in self._access_key.collect_policies():
        doc = ac.IAMPolicy(policy)._policy_json
        statements = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
        for statement in statements:
            result = _statement_result(statement, self._action, resource, ctx)
            if result == ac.PermissionResult.DENIED:
                self._raise_access_denied()
            permitted = permitted or result == ac.PermissionResult.PERMITTED
    if not permitted:
        self._raise_access_denied()


ac.IAMRequestBase.check_action_permitted = check_action_permitted


if __name__ == "__main__":
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # runs until the test closes our stdin (or dies)
    server.stop()
