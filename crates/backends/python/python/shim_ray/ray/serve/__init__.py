"""ferroserve's stand-in for `ray.serve` (not Ray): the API application files are written
against, while ferroserve runs the deployments.

Provided: `deployment`, `ingress`, `batch`, `Deployment`, `Application`, `get_replica_context`,
`get_deployment_handle`, the submodules `handle` (DeploymentHandle, DeploymentResponse),
`config` (AutoscalingConfig, HTTPOptions) and `exceptions` (RayServeException, ...).
`run`, `start`, `shutdown`, `delete` and `status` do nothing but say so on stderr: ferroserve
serves the application (`ferroserve run module:app`), so a module-level `serve.run(app)` is
harmless.
"""

import sys

from . import config, context, exceptions, handle
from .batching import batch
from .config import AutoscalingConfig, HTTPOptions
from .context import get_replica_context
from .deployment import Application, Deployment, deployment, ingress
from .exceptions import RayServeException
from .handle import DeploymentHandle, DeploymentResponse

__all__ = [
    "deployment", "ingress", "batch", "Deployment", "Application", "get_replica_context",
    "get_deployment_handle", "run", "start", "shutdown", "delete", "status",
    "DeploymentHandle", "DeploymentResponse", "AutoscalingConfig", "HTTPOptions",
    "RayServeException",
]


def _says_nothing_to_do(what):
    sys.stderr.write("[ferroserve] serve.{}() does nothing here: ferroserve serves the "
                     "application\n".format(what))
    sys.stderr.flush()


def run(target, *args, name="default", **kwargs):
    """Returns a handle to the application's ingress, as Ray's does; starts nothing."""
    _says_nothing_to_do("run")
    if isinstance(target, Application):
        return DeploymentHandle(target.deployment.name, name)
    return None


def start(*args, **kwargs):
    _says_nothing_to_do("start")


def shutdown(*args, **kwargs):
    _says_nothing_to_do("shutdown")


def delete(*args, **kwargs):
    _says_nothing_to_do("delete")


def status(*args, **kwargs):
    _says_nothing_to_do("status")


def get_deployment_handle(deployment_name, app_name=None):
    """A handle to a deployment of the running application (ferroserve routes by name)."""
    current = context.replica_context
    if app_name is None:
        app_name = current.app_name if current is not None else "default"
    return DeploymentHandle(deployment_name, app_name)
