"""The build runner's shortcuts give exactly what they replace."""

from __future__ import annotations

import functools
import inspect

from pipeline.nikola_runner import CachedSignatures


class Check:
    def __call__(self, task, values):
        return True

    def method(self, task):
        return True


class Sub(Check):
    pass


class OwnSignature:
    def __init__(self, signature: inspect.Signature):
        self.__signature__ = signature

    def __call__(self, *args):
        return True


def plain(task, values, extra=1):
    return True


def test_cached_signatures_equal_inspects_for_every_kind_of_callable() -> None:
    cached = CachedSignatures()
    custom = inspect.Signature([inspect.Parameter("only", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
    callables = [Check(), Check(), Sub(), Check().method, Check().method, plain, functools.partial(plain, 1),
                 OwnSignature(custom), lambda task: True, len]
    for obj in callables:
        assert cached.signature(obj) == inspect.signature(obj), obj
    assert list(cached.signature(OwnSignature(custom)).parameters) == ["only"]
    # one entry per class and per method function; none for the rest
    assert len(cached._cache) == 2
    assert cached.isclass(Check)  # everything else is inspect's
