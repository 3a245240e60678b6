"""Hugging Face surfaces: the diffusers pipeline methods (and, in later issues, transformers models, Hub presets,
the Gradio demo). Thin: each turns a user's request into ``enable_accel`` and nothing more."""
