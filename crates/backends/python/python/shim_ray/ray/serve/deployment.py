"""`serve.deployment`, `serve.ingress`, `Deployment` and `Application` (ferroserve's shim,
not Ray).

`@serve.deployment` (bare or with Ray's keyword options) wraps a class or function in a
`Deployment` that records every option given; `.options(**kw)` returns a new one with more;
`.bind(*args, **kwargs)` returns an `Application`, the node of the deployment graph that
ferroserve_ray.py walks. `@serve.ingress(app)` marks a class as served through an ASGI app
(FastAPI's, usually); ferroserve_ray.py binds the app's routes to the replica's instance.
"""

import inspect

# Read by ferroserve_ray.py off an @serve.ingress class.
ASGI_APP_ATTR = "_ferroserve_asgi_app"

# Ray's per-deployment options, readable as attributes of a Deployment (None when not set).
_OPTION_NAMES = (
    "version", "num_replicas", "route_prefix", "ray_actor_options", "placement_group_bundles",
    "placement_group_strategy", "max_replicas_per_node", "user_config", "max_ongoing_requests",
    "max_queued_requests", "autoscaling_config", "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s",
    "logging_config", "request_router_config",
)


def _normalised(options):
    options = dict(options)
    # Ray's old name for max_ongoing_requests.
    if "max_concurrent_queries" in options:
        options.setdefault("max_ongoing_requests", options.pop("max_concurrent_queries"))
    return options


class Deployment:
    def __init__(self, func_or_class, options):
        if not callable(func_or_class):
            raise TypeError("@serve.deployment must decorate a class or a function, got {!r}"
                            .format(func_or_class))
        self._target = func_or_class
        self._options = _normalised(options)

    @property
    def name(self):
        return self._options.get("name") or self._target.__name__

    @property
    def func_or_class(self):
        return self._target

    @property
    def options_given(self):
        """The options the code set, as given (ferroserve reports these)."""
        return dict(self._options)

    def options(self, *, func_or_class=None, **options):
        return Deployment(self._target if func_or_class is None else func_or_class,
                          {**self._options, **_normalised(options)})

    def bind(self, *args, **kwargs):
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise RuntimeError("Deployments cannot be constructed directly; use "
                           "`{}.bind()` to build an application.".format(self.name))

    def __getattr__(self, name):
        if name in _OPTION_NAMES:
            return self.__dict__.get("_options", {}).get(name)
        raise AttributeError(name)

    def __repr__(self):
        return "Deployment(name={})".format(self.name)


class Application:
    """A deployment bound to its constructor arguments (which may hold other Applications)."""

    def __init__(self, deployment, args, kwargs):
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self):
        return self._deployment

    @property
    def args(self):
        return self._args

    @property
    def kwargs(self):
        return self._kwargs

    def __repr__(self):
        return "Application({})".format(self._deployment.name)


def deployment(_func_or_class=None, **options):
    """`@serve.deployment` or `@serve.deployment(name=..., num_replicas=..., ...)`: every
    keyword is recorded as given; ferroserve interprets the ones it knows."""
    if _func_or_class is not None:
        return Deployment(_func_or_class, options)
    return lambda func_or_class: Deployment(func_or_class, options)


def ingress(app):
    """`@serve.ingress(app)`: the class's replicas serve HTTP through the ASGI app `app`."""

    def decorate(cls):
        if not inspect.isclass(cls):
            raise ValueError("@serve.ingress must be used with a class")
        if any("__call__" in vars(k) for k in cls.__mro__[:-1]):
            raise ValueError("Classes passed to @serve.ingress may not have __call__ method.")
        setattr(cls, ASGI_APP_ATTR, app)
        return cls

    return decorate
