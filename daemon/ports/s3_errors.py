"""What an S3 failure means to the daemon: the bucket could not be read (unknown, waited for), or
it answered with something missing or bad (refused). Shared by aws.py and ranged_get.py."""
from __future__ import annotations

MISSING = {"NoSuchKey", "404", "NotFound"}


class BadObject(OSError):
    """The bucket answered, with something that is not what it should be (size, digest, form)."""


def error_code(e: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (AccessDenied, SlowDown, NoSuchBucket...), else None."""
    response = getattr(e, "response", None)
    return str((response.get("Error") or {}).get("Code")) if isinstance(response, dict) else None


def unreadable(e: BaseException) -> bool:
    """The bucket could not be asked or did not answer (403, throttling, 5xx, a timeout, no network):
    what it holds is unknown. Not: an answer that something is missing or bad."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(e, BadObject):
        return False
    if isinstance(e, ClientError):
        return error_code(e) not in MISSING | {"NoSuchBucket"}
    return isinstance(e, (BotoCoreError, TimeoutError, ConnectionError))
