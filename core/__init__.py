"""dynaccel core: plugin manager, strategy/config/handle types, model adapters, presets, public API, CLI."""
