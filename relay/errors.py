"""One exception tree for everything relay reports to a client.

    RelayError (500 internal)
    ├── InvalidRequest (400 invalid_request)       a control request fails validation
    │   ├── EngineUnavailable (400 engine_unavailable)
    │   └── MalformedCallback (400 malformed_json | malformed_content)
    ├── Unauthorized (401 unauthorized)            control API without a valid token
    │   └── SignatureRejected (401 missing_signature | bad_signature | stale_signature)
    ├── Forbidden (403 forbidden)                  no control token set, non-loopback client
    ├── NotFound (404 not_found)
    │   ├── StreamNotFound (404 stream_not_found)
    │   ├── UnknownCallback (404 unknown_callback)
    │   └── TaskEnded (404 task_ended)             a callback for a task that has ended
    ├── StreamBusy (409 stream_busy)               the stream is already captioned
    ├── BodyTooLarge (413 body_too_large)
    ├── CloudError (502, the cloud's own code)     a cloud API refused a call
    └── StoreUnavailable (503 store_unavailable)   the store cannot take it now; retry
                         (503 task_registering)    a callback that beat its task's registration

Each error knows its HTTP status and error code; web/errors.py turns them into
``{"error": {"code", "message"}}`` in one place. Messages never carry a secret.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RelayError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details


class InvalidRequest(RelayError):
    status = 400
    default_code = "invalid_request"


class EngineUnavailable(InvalidRequest):
    default_code = "engine_unavailable"


class MalformedCallback(InvalidRequest):
    default_code = "malformed_content"


class Unauthorized(RelayError):
    status = 401
    default_code = "unauthorized"


class SignatureRejected(Unauthorized):
    default_code = "bad_signature"


class Forbidden(RelayError):
    status = 403
    default_code = "forbidden"


class NotFound(RelayError):
    status = 404
    default_code = "not_found"


class StreamNotFound(NotFound):
    default_code = "stream_not_found"


class UnknownCallback(NotFound):
    default_code = "unknown_callback"


class TaskEnded(NotFound):
    default_code = "task_ended"


class StreamBusy(RelayError):
    status = 409
    default_code = "stream_busy"


class BodyTooLarge(RelayError):
    status = 413
    default_code = "body_too_large"


class CloudError(RelayError):
    status = 502
    default_code = "cloud_error"


class StoreUnavailable(RelayError):
    status = 503
    default_code = "store_unavailable"
