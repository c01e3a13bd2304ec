"""One error hierarchy for the whole package (layer 0).

An HttpError carries the status the client sees, so the connection layer picks a
prebuilt response by `err.status` instead of an isinstance ladder. A ConfigError names
the TOML key path that is wrong.
"""


class ForkproxyError(Exception):
    """Base of every error forkproxy raises on purpose."""


class ConfigError(ForkproxyError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class HttpError(ForkproxyError):
    """A request (or response) the proxy refuses; `status` is what the client gets."""

    status = 400


class BadRequest(HttpError):
    status = 400


class NotFound(HttpError):
    status = 404


class RequestTimeout(HttpError):
    status = 408


class BodyTooLarge(HttpError):
    status = 413


class UriTooLong(HttpError):
    status = 414


class HeadTooLarge(HttpError):
    status = 431


class UpstreamError(HttpError):
    """The upstream failed: refused, reset, timed out or answered garbage."""

    status = 502


class BadGateway(UpstreamError):
    status = 502


class ServiceUnavailable(UpstreamError):
    status = 503


class GatewayTimeout(UpstreamError):
    status = 504
