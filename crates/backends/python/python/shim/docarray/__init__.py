"""The subset of DocArray 0.x (the v1 API used by Jina 3) that executors use.

ferroserve's Python worker installs this as `docarray` only when the real Jina does not
import, so that tutorial executors run without the real packages. Behaviour follows DocArray
v1 for what is here: ids are uuid4 hex, unknown Document keyword arguments go into `tags`,
`scores` behaves like v1's defaultdict of NamedScore, bulk accessors (`.texts`,
`.embeddings`, ...) read and write through the documents.

numpy is imported only when something stacks or compares arrays.
"""

import collections.abc
import copy as _copy
import uuid

__version__ = "0.21.0+ferroserve.shim"

__all__ = ["Document", "DocumentArray", "NamedScore"]


def _random_id():
    return uuid.uuid4().hex


class NamedScore:
    """A score: `d.scores['cosine'].value`."""

    __slots__ = ("value", "op_name", "description", "ref_id")

    def __init__(self, value=None, op_name=None, description=None, ref_id=None):
        self.value = value
        self.op_name = op_name
        self.description = description
        self.ref_id = ref_id

    def __eq__(self, other):
        if not isinstance(other, NamedScore):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        fields = ", ".join(
            "{}={!r}".format(k, getattr(self, k)) for k in self.__slots__
            if getattr(self, k) is not None)
        return "NamedScore({})".format(fields)


class _NamedScoreMap(dict):
    """v1 scores: a missing name yields a fresh NamedScore (so `d.scores['x'].value = 1`
    works); plain numbers and dicts assigned are wrapped into NamedScore."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.update(*args, **kwargs)

    def __missing__(self, key):
        score = NamedScore()
        dict.__setitem__(self, key, score)
        return score

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, _to_named_score(value))

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]


def _to_named_score(value):
    if isinstance(value, NamedScore):
        return value
    if isinstance(value, dict):
        return NamedScore(**value)
    return NamedScore(value=value)


_CONTENT_FIELDS = ("text", "blob", "tensor")

# Every field a v1 Document has; anything else given to the constructor goes into tags.
_FIELDS = (
    "id", "parent_id", "granularity", "adjacency", "blob", "tensor", "mime_type", "text",
    "weight", "uri", "tags", "offset", "location", "embedding", "modality", "evaluations",
    "scores", "chunks", "matches",
)


class Document:
    """One document. Construct with keyword fields, or from a Document or dict."""

    def __init__(self, _obj=None, copy=False, **kwargs):
        self.id = _random_id()
        self.parent_id = None
        self.granularity = 0
        self.adjacency = 0
        self.blob = None
        self.tensor = None
        self.mime_type = None
        self.text = None
        self.weight = None
        self.uri = None
        self.offset = None
        self.location = None
        self.embedding = None
        self.modality = None
        self._tags = {}
        self._scores = _NamedScoreMap()
        self._evaluations = _NamedScoreMap()
        self._chunks = DocumentArray()
        self._matches = DocumentArray()

        if _obj is not None:
            if isinstance(_obj, Document):
                source = {k: getattr(_obj, k) for k in _FIELDS}
                if copy:
                    source = _copy.deepcopy(source)
                kwargs = dict(source, **kwargs)
            elif isinstance(_obj, dict):
                kwargs = dict(_obj, **kwargs)
            else:
                raise ValueError(
                    "Document() takes a Document or a dict as positional argument, not {}"
                    .format(type(_obj).__name__))

        if "content" in kwargs:
            self.content = kwargs.pop("content")
        unknown = {}
        for key, value in kwargs.items():
            if key in _FIELDS:
                if value is not None or key not in ("id",):
                    setattr(self, key, value)
            else:
                unknown[key] = value
        if self.id is None:
            self.id = _random_id()
        if unknown:
            self._tags.update(unknown)

    # Containers are coerced on assignment so `d.chunks = [...]` or `d.tags = None` behave.
    @property
    def tags(self):
        return self._tags

    @tags.setter
    def tags(self, value):
        self._tags = dict(value) if value is not None else {}

    @property
    def scores(self):
        return self._scores

    @scores.setter
    def scores(self, value):
        self._scores = _NamedScoreMap(value or {})

    @property
    def evaluations(self):
        return self._evaluations

    @evaluations.setter
    def evaluations(self, value):
        self._evaluations = _NamedScoreMap(value or {})

    @property
    def chunks(self):
        return self._chunks

    @chunks.setter
    def chunks(self, value):
        self._chunks = value if isinstance(value, DocumentArray) else DocumentArray(value)

    @property
    def matches(self):
        return self._matches

    @matches.setter
    def matches(self, value):
        self._matches = value if isinstance(value, DocumentArray) else DocumentArray(value)

    @property
    def content_type(self):
        for name in _CONTENT_FIELDS:
            if getattr(self, name) is not None:
                return name
        return None

    @property
    def content(self):
        kind = self.content_type
        return getattr(self, kind) if kind else None

    @content.setter
    def content(self, value):
        # As in v1, one content field at a time, chosen by the value's type.
        for name in _CONTENT_FIELDS:
            setattr(self, name, None)
        if value is None:
            return
        if isinstance(value, str):
            self.text = value
        elif isinstance(value, (bytes, bytearray)):
            self.blob = bytes(value)
        else:
            self.tensor = value

    @property
    def non_empty_fields(self):
        out = []
        for name in _FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name in ("tags", "scores", "evaluations", "chunks", "matches") and not value:
                continue
            if name in ("granularity", "adjacency") and value == 0:
                continue
            out.append(name)
        return tuple(out)

    def to_dict(self):
        return {name: getattr(self, name) for name in self.non_empty_fields}

    def load_uri_to_blob(self, **kwargs):
        self.blob = _read_uri(self.uri)
        return self

    def load_uri_to_text(self, charset="utf-8", **kwargs):
        self.text = _read_uri(self.uri).decode(charset)
        return self

    def load_uri_to_image_tensor(self, width=None, height=None, channel_axis=-1, **kwargs):
        import io

        import numpy as np
        from PIL import Image  # only needed by executors that use this helper

        image = Image.open(io.BytesIO(_read_uri(self.uri))).convert("RGB")
        if width or height:
            image = image.resize((width or image.width, height or image.height))
        tensor = np.asarray(image)
        if channel_axis != -1:
            tensor = np.moveaxis(tensor, -1, channel_axis)
        self.tensor = tensor
        return self

    def summary(self):
        print(repr(self))
        for name in self.non_empty_fields:
            print("  {}: {!r}".format(name, getattr(self, name)))

    def __repr__(self):
        return "<Document {} at {}>".format(self.non_empty_fields, self.id)


def _read_uri(uri):
    if uri is None:
        raise ValueError("the Document has no uri")
    if uri.startswith(("http://", "https://", "data:")):
        import urllib.request

        with urllib.request.urlopen(uri) as response:
            return response.read()
    with open(uri, "rb") as f:
        return f.read()


def _stack(values):
    """Stacks arrays the way v1's unravel does: torch with torch, everything else numpy."""
    first = values[0]
    if type(first).__module__.startswith("torch"):
        import torch

        return torch.stack(list(values))
    import numpy as np

    return np.stack([np.asarray(v) for v in values])


class DocumentArray(collections.abc.MutableSequence):
    """An in-memory list of Documents with v1's indexing and bulk accessors."""

    def __init__(self, _docs=None, **kwargs):
        if _docs is None:
            self._data = []
        elif isinstance(_docs, Document):
            self._data = [_docs]
        else:
            self._data = list(_docs)

    @classmethod
    def empty(cls, size=0):
        return cls(Document() for _ in range(size))

    # -- sequence protocol -------------------------------------------------------------
    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return iter(self._data)

    def __bool__(self):
        return bool(self._data)

    def __contains__(self, item):
        if isinstance(item, str):
            return any(d.id == item for d in self._data)
        return any(d is item for d in self._data)

    def insert(self, index, value):
        self._data.insert(index, value)

    def append(self, value):
        self._data.append(value)

    def extend(self, values):
        self._data.extend(values)

    def clear(self):
        self._data.clear()

    def __add__(self, other):
        return DocumentArray(self._data + list(other))

    def __iadd__(self, other):
        self._data.extend(other)
        return self

    def __repr__(self):
        return "<DocumentArray (length={}) at {}>".format(len(self), id(self))

    def _position_of_id(self, doc_id):
        for i, doc in enumerate(self._data):
            if doc.id == doc_id:
                return i
        raise KeyError(doc_id)

    def _positions(self, key):
        """Positions selected by a list of ints, ids or booleans (a mask), as v1 allows."""
        keys = list(key.tolist() if hasattr(key, "tolist") else key)
        if keys and all(isinstance(k, bool) for k in keys):
            if len(keys) != len(self._data):
                raise IndexError("boolean mask of length {} for {} documents"
                                 .format(len(keys), len(self._data)))
            return [i for i, keep in enumerate(keys) if keep]
        return [self._position_of_id(k) if isinstance(k, str) else int(k) for k in keys]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key.startswith("@"):
                return self.traverse_flat(key[1:])
            return self._data[self._position_of_id(key)]
        if isinstance(key, slice):
            return DocumentArray(self._data[key])
        if isinstance(key, tuple) and len(key) == 2 and (
                isinstance(key[1], str)
                or (isinstance(key[1], (list, tuple)) and all(isinstance(a, str) for a in key[1]))):
            docs = self[key[0]]
            if isinstance(docs, Document):
                docs = [docs]
            if isinstance(key[1], str):
                return [getattr(d, key[1]) for d in docs]
            return [[getattr(d, a) for d in docs] for a in key[1]]
        if isinstance(key, (list, tuple)) or hasattr(key, "tolist"):
            return DocumentArray(self._data[i] for i in self._positions(key))
        return self._data[key]

    def __setitem__(self, key, value):
        if isinstance(key, str):
            self._data[self._position_of_id(key)] = value
        elif isinstance(key, slice):
            self._data[key] = list(value)
        else:
            self._data[key] = value

    def __delitem__(self, key):
        if isinstance(key, str):
            del self._data[self._position_of_id(key)]
        elif isinstance(key, slice):
            del self._data[key]
        elif isinstance(key, (list, tuple)) or hasattr(key, "tolist"):
            for i in sorted(set(self._positions(key)), reverse=True):
                del self._data[i]
        else:
            del self._data[key]

    # -- traversal ---------------------------------------------------------------------
    def traverse_flat(self, traversal_paths="r"):
        """v1 traversal paths: 'r' root, 'c' chunks, 'm' matches, combined ('cc', 'r,c')."""
        out = DocumentArray()
        for path in traversal_paths.split(","):
            path = path.strip()
            level = list(self._data)
            for step in path:
                if step == "r":
                    continue
                if step == "c":
                    level = [c for d in level for c in d.chunks]
                elif step == "m":
                    level = [m for d in level for m in d.matches]
                else:
                    raise ValueError("unknown traversal path step {!r}".format(step))
            out.extend(level)
        return out

    def batch(self, batch_size, shuffle=False):
        indices = list(range(len(self._data)))
        if shuffle:
            import random

            random.shuffle(indices)
        for start in range(0, len(indices), batch_size):
            yield DocumentArray(self._data[i] for i in indices[start:start + batch_size])

    def apply(self, func):
        for i, doc in enumerate(self._data):
            result = func(doc)
            if result is not None:
                self._data[i] = result
        return self

    # -- bulk accessors ----------------------------------------------------------------
    def _set_each(self, attr, values):
        if values is None:
            for doc in self._data:
                setattr(doc, attr, None)
            return
        n = len(values)
        if n != len(self._data):
            raise ValueError(
                "Length mismatch: the DocumentArray has {} documents, got {} values for {}"
                .format(len(self._data), n, attr))
        for doc, value in zip(self._data, values):
            setattr(doc, attr, value)

    @property
    def texts(self):
        return [d.text for d in self._data]

    @texts.setter
    def texts(self, value):
        self._set_each("text", value)

    @property
    def uris(self):
        return [d.uri for d in self._data]

    @uris.setter
    def uris(self, value):
        self._set_each("uri", value)

    @property
    def blobs(self):
        return [d.blob for d in self._data]

    @blobs.setter
    def blobs(self, value):
        self._set_each("blob", value)

    @property
    def contents(self):
        return [d.content for d in self._data]

    @property
    def tensors(self):
        # v1 decides from the first document; a later missing one is an error from stacking.
        if self._data and self._data[0].tensor is not None:
            return _stack([d.tensor for d in self._data])
        return None

    @tensors.setter
    def tensors(self, value):
        self._set_each("tensor", value)

    @property
    def embeddings(self):
        if self._data and self._data[0].embedding is not None:
            return _stack([d.embedding for d in self._data])
        return None

    @embeddings.setter
    def embeddings(self, value):
        self._set_each("embedding", value)

    # -- matching ----------------------------------------------------------------------
    def match(self, darray, metric="cosine", limit=20, metric_name=None, exclude_self=False,
              only_id=False, **kwargs):
        """Nearest neighbours by embedding, filling each doc's `.matches` (sorted by
        ascending distance, score under `metric_name or metric`), as v1's match does."""
        import numpy as np

        if not self._data or not len(darray):
            return
        queries = np.asarray(self.embeddings, dtype=np.float64)
        index = np.asarray(darray.embeddings, dtype=np.float64)
        queries = queries.reshape(len(queries), -1)
        index = index.reshape(len(index), -1)
        if metric == "cosine":
            qn = np.linalg.norm(queries, axis=1, keepdims=True)
            xn = np.linalg.norm(index, axis=1, keepdims=True)
            dist = 1.0 - (queries @ index.T) / np.maximum(qn * xn.T, 1e-12)
        elif metric in ("euclidean", "sqeuclidean"):
            sq = ((queries ** 2).sum(1)[:, None] + (index ** 2).sum(1)[None, :]
                  - 2.0 * queries @ index.T)
            sq = np.maximum(sq, 0.0)
            dist = np.sqrt(sq) if metric == "euclidean" else sq
        else:
            raise NotImplementedError(
                "metric {!r} is not supported (cosine, euclidean, sqeuclidean)".format(metric))
        name = metric_name or metric
        if limit is None:
            limit = len(darray)
        for qi, query in enumerate(self._data):
            matches = DocumentArray()
            for xi in np.argsort(dist[qi], kind="stable"):
                candidate = darray[int(xi)]
                if exclude_self and candidate.id == query.id:
                    continue
                match = Document(id=candidate.id) if only_id else Document(candidate, copy=True)
                match.scores[name] = NamedScore(value=float(dist[qi, xi]), ref_id=query.id)
                matches.append(match)
                if len(matches) >= limit:
                    break
            query.matches = matches

    def summary(self):
        print(repr(self))
