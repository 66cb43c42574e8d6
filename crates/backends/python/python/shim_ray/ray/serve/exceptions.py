"""The exception types of `ray.serve.exceptions` that application code catches or raises
(ferroserve's shim, not Ray)."""


class RayServeException(Exception):
    pass


class BackPressureError(RayServeException):
    """Raised by Ray when a deployment's queue is full; ferroserve answers 503 itself."""


class RequestCancelledError(RayServeException):
    pass


class DeploymentUnavailableError(RayServeException):
    pass
