"""`ray.serve.config`'s option objects (ferroserve's shim, not Ray).

They record the fields the code gives: ferroserve reads those (as a plain dict, through
`dict(exclude_unset=True)`) from the deployment's options and fills in Ray's defaults itself. Reading a field that was not
given returns Ray's default, so code that inspects its own config still works.
"""


class _Recorded:
    _defaults = {}

    def __init__(self, **fields):
        # Unknown fields are kept, not refused: a newer Ray's field should reach ferroserve,
        # which says what it does not support.
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name):
        # .get: copy and pickle probe attributes before _fields exists.
        fields = self.__dict__.get("_fields", {})
        if name in fields:
            return fields[name]
        if name in self._defaults:
            return self._defaults[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        self._fields[name] = value

    def dict(self, exclude_unset=False, **kwargs):
        """All fields, Ray's defaults included, as pydantic's dict() gives them; only the
        fields given with exclude_unset=True (what ferroserve reads)."""
        if exclude_unset:
            return dict(self._fields)
        return {**self._defaults, **self._fields}

    model_dump = dict

    def __eq__(self, other):
        return type(other) is type(self) and other._fields == self._fields

    def __repr__(self):
        return "{}({})".format(type(self).__name__,
                               ", ".join("{}={!r}".format(k, v) for k, v in self._fields.items()))


class AutoscalingConfig(_Recorded):
    _defaults = {
        "min_replicas": 1, "initial_replicas": None, "max_replicas": 1,
        "target_ongoing_requests": 2, "target_num_ongoing_requests_per_replica": 2,
        "metrics_interval_s": 10.0, "look_back_period_s": 30.0,
        "smoothing_factor": 1.0, "upscale_smoothing_factor": None,
        "downscale_smoothing_factor": None, "upscaling_factor": None,
        "downscaling_factor": None, "downscale_delay_s": 600.0, "upscale_delay_s": 30.0,
        "aggregation_function": "mean", "policy": None,
    }


class HTTPOptions(_Recorded):
    """Accepted by serve.start(); ferroserve's own settings decide host, port and timeouts."""
