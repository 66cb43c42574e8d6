"""`@serve.batch` (ferroserve's shim, not Ray).

ferroserve does the batching: it queues the calls to a batched method and hands a batch to the
worker in one `call`, which calls the undecorated function with one list per argument. The
decorator therefore only records its settings and keeps the function reachable; when user code
calls the decorated method itself with single arguments (`self.generate(x)` from another
method), the call runs as a batch of one.
"""

import functools
import inspect

# What ferroserve_ray.py reads off a decorated function (or a method bound from one).
SETTINGS_ATTR = "_ferroserve_batch"
FUNCTION_ATTR = "_ferroserve_batch_fn"


def batch(_func=None, *, max_batch_size=10, batch_wait_timeout_s=0.01, **other_options):
    """`@serve.batch` or `@serve.batch(max_batch_size=..., batch_wait_timeout_s=...)`."""
    if _func is not None and not callable(_func):
        raise TypeError("@serve.batch takes keyword arguments only")
    if int(max_batch_size) < 1:
        raise ValueError("max_batch_size must be at least 1")
    if float(batch_wait_timeout_s) < 0:
        raise ValueError("batch_wait_timeout_s must be at least 0")
    settings = {"max_batch_size": int(max_batch_size),
                "batch_wait_timeout_s": float(batch_wait_timeout_s), **other_options}

    def decorate(fn):
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                batch_args, batch_kwargs = _as_batch_of_one(wrapper, args, kwargs)
                return _single(await fn(*batch_args, **batch_kwargs))
        else:
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                batch_args, batch_kwargs = _as_batch_of_one(wrapper, args, kwargs)
                return _single(fn(*batch_args, **batch_kwargs))
        setattr(wrapper, SETTINGS_ATTR, settings)
        setattr(wrapper, FUNCTION_ATTR, fn)
        return wrapper

    return decorate(_func) if _func is not None else decorate


def _as_batch_of_one(wrapper, args, kwargs):
    # As Ray does: a method's `self` is recognised by it having this very function as the
    # attribute of that name, and it stays a single value.
    lead = ()
    if args:
        bound = getattr(args[0], wrapper.__name__, None)
        if getattr(bound, "__func__", None) is wrapper:
            lead, args = args[:1], args[1:]
    return lead + tuple([a] for a in args), {k: [v] for k, v in kwargs.items()}


def _single(results):
    results = list(results)
    if len(results) != 1:
        raise TypeError("a @serve.batch function called with one request returned {} results"
                        .format(len(results)))
    return results[0]
