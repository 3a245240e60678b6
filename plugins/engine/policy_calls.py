"""Inference calls of a chunking policy model (π0's ``sample_actions``): where one inference starts and ends.

A flow-matching policy such as transformers' ``PI0ForConditionalGeneration`` computes one action chunk per call of
its sampling method: it runs the vision-language prefix once, then calls its own ``forward`` once per denoising
step. The engines of the VLA family (and the cache engine when it runs on the action expert) need to know where an
inference starts, how many denoising steps it takes and which step a ``forward`` call is; some also change the
call's arguments (``denoise_steps`` sets ``num_steps``).

:func:`policy_calls` gives the one :class:`PolicyCalls` of a model. It wraps the sampling method *on the instance*
(an attribute of the object shadows the class's method; the class is never touched) the first time a listener is
added and takes the wrapper away when the last one is removed, so a model with nothing enabled runs the library's
code unchanged. Listeners are called in the order they were added:

- ``before(call)``: an inference starts; ``call.kwargs`` may be changed (the arguments the method runs with);
- ``after(call, result)``: it returned ``result``; the listener may return a replacement.

A forward pre-hook counts the denoising steps: inside an inference ``call.step`` is the index of the forward call
under way (0-based), ``call.num_steps`` the step count the method runs (its ``num_steps`` argument or the config's
``num_inference_steps``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ...core.errors import DynaccelError

_ATTR = "_dynaccel_policy_calls"


@dataclass
class PolicyCall:
    """One inference (one call of the sampling method)."""

    index: int  # how many inferences this model ran before this one (since the wrapper was installed)
    kwargs: dict[str, Any]  # the arguments, by name (listeners may change them)
    num_steps: int | None = None  # the denoising steps this inference runs
    step: int = -1  # the forward call under way (-1 before the first)
    data: dict[str, Any] = field(default_factory=dict)  # listeners' notes for this inference


@dataclass
class _Listener:
    name: str
    before: Callable[[PolicyCall], None] | None
    after: Callable[[PolicyCall, Any], Any] | None


class PolicyCalls:
    """The inference listeners of one model (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, method: str, steps_config: str | None):
        self.model, self.method, self.steps_config = model, method, steps_config
        self.listeners: list[_Listener] = []
        self.current: PolicyCall | None = None
        self.count = 0
        self._hook = None
        self._original = getattr(type(model), method, None)
        if self._original is None or not callable(self._original):
            raise DynaccelError(f"{type(model).__name__} has no method {method!r} to run inferences with")
        self._signature = inspect.signature(self._original)

    # ---- listeners ------------------------------------------------------------------------------------------------
    def add(self, name: str, before=None, after=None) -> None:
        if any(item.name == name for item in self.listeners):
            raise DynaccelError(f"internal error: inference listener {name!r} added twice")
        if not self.listeners:
            self._install()
        self.listeners.append(_Listener(name, before, after))

    def remove(self, name: str) -> None:
        """Remove listener ``name`` (no error when it is not there); the last one out removes the wrapper."""
        self.listeners = [item for item in self.listeners if item.name != name]
        if not self.listeners:
            self._uninstall()

    # ---- wrapper --------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        original = self._original.__get__(self.model)

        @functools.wraps(original)
        def sample(*args, **kwargs):
            return self._run(original, args, kwargs)

        self.model.__dict__[self.method] = sample
        self._hook = self.model.register_forward_pre_hook(self._forward_started)
        self.model.__dict__[_ATTR] = self

    def _uninstall(self) -> None:
        self.model.__dict__.pop(self.method, None)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.model.__dict__.pop(_ATTR, None)
        self.current = None

    def _forward_started(self, module, args) -> None:
        if self.current is not None:
            self.current.step += 1

    def _run(self, original: Callable, args: tuple, kwargs: dict) -> Any:
        if self.current is not None:  # a nested call (should not happen): run it plainly
            return original(*args, **kwargs)
        bound = self._signature.bind(self.model, *args, **kwargs)
        named = dict(bound.arguments)
        named.pop(next(iter(self._signature.parameters)))  # self
        extra = named.pop("kwargs", None) if self._has_var_kwargs() else None
        if extra:
            named.update(extra)
        call = PolicyCall(self.count, named)
        self.count += 1
        self.current = call
        try:
            for item in list(self.listeners):
                if item.before is not None:
                    item.before(call)
            call.num_steps = self._steps_of(call.kwargs)
            result = original(**call.kwargs)
            for item in list(self.listeners):
                if item.after is not None:
                    replaced = item.after(call, result)
                    if replaced is not None:
                        result = replaced
            return result
        finally:
            self.current = None

    def _has_var_kwargs(self) -> bool:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD and name == "kwargs"
                   for name, p in self._signature.parameters.items())

    def _steps_of(self, kwargs: dict) -> int | None:
        n = kwargs.get("num_steps")
        if n:
            return int(n)
        if self.steps_config:
            value = getattr(self.model.config, self.steps_config, None)
            return int(value) if value else None
        return None


def policy_calls(model: torch.nn.Module, method: str = "sample_actions",
                 steps_config: str | None = "num_inference_steps") -> PolicyCalls:
    """The :class:`PolicyCalls` of ``model`` (kept on the model while it has listeners; add one right away)."""
    existing = model.__dict__.get(_ATTR)
    return existing if existing is not None else PolicyCalls(model, method, steps_config)


def current_call(model: torch.nn.Module) -> PolicyCall | None:
    """The inference under way on ``model`` (None outside one or when nothing listens)."""
    calls = model.__dict__.get(_ATTR)
    return calls.current if calls is not None else None
