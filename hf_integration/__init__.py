"""Hugging Face surfaces: the diffusers pipeline and transformers model methods (``pipe.enable_accel``...), the
CLI commands bench, calibrate, demo, quickstart and presets push/pull (registered by the built-in plugin
``dynaccel.hf`` in ``plugin.py``), Hub presets (``hub.py``) and the Gradio demo (``demo.py``). Thin: each turns a
user's request into ``enable_accel`` (or the registry) and nothing more."""
