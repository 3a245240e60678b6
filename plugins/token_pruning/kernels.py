"""The token families' kernel, :func:`query_rows_attention` (the attention rows a few query tokens give every key,
averaged over heads), lives with the token engine in :mod:`dynaccel.plugins.engine.token_kernels` (reference:
``token_kernels_reference.py``, Triton: ``token_kernels_triton.py``); it is importable from here too."""

from ..engine.token_kernels import AUTO_TRITON_MAX_KEYS, query_rows_attention, query_rows_attention_reference

__all__ = ["AUTO_TRITON_MAX_KEYS", "query_rows_attention", "query_rows_attention_reference"]
