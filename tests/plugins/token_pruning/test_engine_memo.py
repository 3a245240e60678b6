"""The per-forward memo keys values by tensor identity; a freed tensor's id must never hit a stale entry.

The full suite once failed in SmolLM2's SlimInfer prefill with position embeddings for 140 tokens on a layer that
kept 94: the memo key held only ``id(idx)`` of an earlier, freed token subset, and a new subset got its id."""

import torch

from dynaccel.plugins.engine.tokens import Memo


def test_keys_of_freed_tensors_are_never_reused_while_the_memo_lives():
    memo = Memo()
    seen = set()
    for n in range(200):
        idx = torch.arange(n + 1)  # a new token subset each time; the previous one is dropped here
        key = memo.key("pe", idx)
        assert key not in seen, "a new tensor reused the id of a freed one: stale memo hit"
        seen.add(key)
        memo[key] = n
    assert len(memo) == 200


def test_keys_name_the_kind_and_each_object():
    memo = Memo()
    a, b = torch.zeros(1), torch.zeros(1)
    assert memo.key("mask", a, None, b) == ("mask", id(a), None, id(b))
    assert memo.key("pe", a) != memo.key("pid", a)
