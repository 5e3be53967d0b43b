"""Exceptions of the vigil client.

Every error vigild reports carries a stable ``code`` (docs/protocol.md, "Error codes") and a
``message`` meant for people; ``field`` names the request field to blame when there is one.
Catch a family (``RequestError``, ``LimitError``) or one condition (``NotFound``), or
``VigilError`` for all of them. Failures on this side of the socket are ``DaemonUnreachable``
(no answer in time) and ``ProtocolError`` (an answer that does not follow the protocol).
"""


class VigilError(Exception):
    """Base class: an error reply from vigild, or a failure to talk to it."""

    code = "error"

    def __init__(self, message, code=None, field=None, reply=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field
        self.reply = reply

    def __str__(self):
        return "%s: %s" % (self.code, self.message)


class DaemonUnreachable(VigilError):
    """No answer from vigild within the timeout: not running, wrong endpoint, or wrong keys."""

    code = "unreachable"


class ProtocolError(VigilError):
    """vigild sent something the protocol does not allow (a bug on one side or the other)."""

    code = "protocol"


class RequestError(VigilError):
    """The request was malformed or invalid: bad_json, bad_request, unknown_op,
    unsupported_version, bad_url. ``field`` names the offending field."""


class BadURL(RequestError):
    code = "bad_url"


class LimitError(VigilError):
    """A configured limit was exceeded: too_large, limit_exceeded, queue_full."""


class QueueFull(LimitError):
    """Too many queries waiting in the daemon; retry later."""

    code = "queue_full"


class NotFound(VigilError):
    """No such stream, watch or query."""

    code = "not_found"


class AlreadyExists(VigilError):
    """A stream or watch of that name exists already."""

    code = "already_exists"


class Forbidden(VigilError):
    """The URL's protocol or image paths are not allowed by the daemon's configuration."""

    code = "forbidden"


class Cancelled(VigilError):
    """The request was cancelled before it started."""

    code = "cancelled"


class ShuttingDown(VigilError):
    """The daemon is stopping."""

    code = "shutting_down"


class MediaError(VigilError):
    """The source or image could not be opened or decoded."""

    code = "media_error"


class ModelError(VigilError):
    """The model failed (for example the context cannot hold the request)."""

    code = "model_error"


class InternalError(VigilError):
    """A bug or out of memory in the daemon; the message says where."""

    code = "internal"


_BY_CODE = {
    "bad_json": RequestError,
    "bad_request": RequestError,
    "unknown_op": RequestError,
    "unsupported_version": RequestError,
    "bad_url": BadURL,
    "too_large": LimitError,
    "limit_exceeded": LimitError,
    "queue_full": QueueFull,
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "forbidden": Forbidden,
    "cancelled": Cancelled,
    "shutting_down": ShuttingDown,
    "media_error": MediaError,
    "model_error": ModelError,
    "internal": InternalError,
}


def error_from_reply(reply):
    """The exception for an error reply ``{"ok": false, "error": {...}}``. Codes this version
    does not know (the protocol may add some) become a plain ``VigilError``."""
    err = reply.get("error") if isinstance(reply.get("error"), dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else "unknown"
    message = err.get("message") if isinstance(err.get("message"), str) else "(no message)"
    field = err.get("field") if isinstance(err.get("field"), str) else None
    cls = _BY_CODE.get(code, VigilError)
    return cls(message, code=code, field=field, reply=reply)
