# A Jina executor written in Python, as Jina's tutorials write them (standard library only, so any
# python3 runs it): squeezes whitespace and marks the document.
from docarray import DocumentArray
from jina import Executor, requests


class Clean(Executor):
    @requests
    def clean(self, docs: DocumentArray, **kwargs):
        for d in docs:
            d.text = " ".join(d.text.split())
            d.tags["cleaned"] = True
