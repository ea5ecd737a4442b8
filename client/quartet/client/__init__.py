"""The quartet Python SDK: `Client(target)` and its services, and `QuartetError`.

    from quartet.client import Client

    with Client("localhost:50051") as client:
        score = client.scores.create(41)
        print(score.value)  # 42.0

The messages returned are the generated protobuf classes of `quartet.<domain>.v1`.
"""

from quartet.client._client import Client
from quartet.client._errors import FieldViolation, QuartetError
from quartet.client._events import BufferedSender, EventsNotSent, EventTail, event

__all__ = [
    "BufferedSender",
    "Client",
    "EventTail",
    "EventsNotSent",
    "FieldViolation",
    "QuartetError",
    "event",
]
