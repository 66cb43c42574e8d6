"""Where a replica's state lives while ferroserve's ray worker runs it (ferroserve's shim,
not Ray).

ferroserve_ray.py sets `runtime` (the object that sends handle calls to ferroserve) and
`replica_context` once it starts a replica; both stay None while an application is only
imported or described.
"""

from .exceptions import RayServeException

# An object with submit(deployment, method, args, kwargs) -> concurrent.futures.Future whose
# result is ("result", pickled value) or ("error", "Type: message", pickled exception | None).
runtime = None
replica_context = None


class ReplicaID:
    """Ray's replica id: `unique_id` is the part after '#' of ferroserve's "Name#0"."""

    def __init__(self, full_id, deployment_name, app_name):
        self._full = full_id
        self.unique_id = full_id.rpartition("#")[2]
        self.deployment_id = DeploymentID(deployment_name, app_name)

    def to_full_id_str(self):
        return self._full

    def __str__(self):
        return self._full

    __repr__ = __str__


class DeploymentID:
    def __init__(self, name, app_name):
        self.name = name
        self.app_name = app_name


class ReplicaContext:
    def __init__(self, app_name, deployment, replica_id, servable_object=None):
        self.app_name = app_name
        self.deployment = deployment
        self.replica_tag = replica_id
        self.replica_id = ReplicaID(replica_id, deployment, app_name)
        self.servable_object = servable_object


def get_replica_context():
    """The running replica's context, as `serve.get_replica_context()` gives it in Ray."""
    if replica_context is None:
        raise RayServeException(
            "`serve.get_replica_context()` may only be called from within a Ray Serve "
            "deployment.")
    return replica_context
