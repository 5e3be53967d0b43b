"""vigil_client: talk to vigild (ask questions about live video) from Python.

    from vigil_client import Client

    with Client() as vc:                       # ipc:///run/vigil/vigild.sock, or $VIGIL_ENDPOINT
        vc.stream_add("gate", "rtsp://10.0.0.5/live", fps=2, tokens_per_pair=256)
        answer = vc.ask("gate", "Is the gate open?", window=30)
        for piece in answer:
            print(piece, end="", flush=True)
        print()
        print(answer.finish_reason, answer.timing)

The protocol is described in docs/protocol.md; errors raise VigilError subclasses carrying
the protocol's error code.
"""

from .client import (
    DEFAULT_ENDPOINT,
    DEFAULT_EVENTS_ENDPOINT,
    PROTOCOL_VERSION,
    Answer,
    Client,
    Event,
    EventStream,
    derive_events_endpoint,
)
from .errors import (
    AlreadyExists,
    BadURL,
    Cancelled,
    DaemonUnreachable,
    Forbidden,
    InternalError,
    LimitError,
    MediaError,
    ModelError,
    NotFound,
    ProtocolError,
    QueueFull,
    RequestError,
    ShuttingDown,
    VigilError,
    error_from_reply,
)

__version__ = "0.1.0"

__all__ = [
    "Client", "Answer", "Event", "EventStream", "derive_events_endpoint",
    "DEFAULT_ENDPOINT", "DEFAULT_EVENTS_ENDPOINT", "PROTOCOL_VERSION",
    "VigilError", "DaemonUnreachable", "ProtocolError", "RequestError", "BadURL", "LimitError",
    "QueueFull", "NotFound", "AlreadyExists", "Forbidden", "Cancelled", "ShuttingDown",
    "MediaError", "ModelError", "InternalError", "error_from_reply",
]
