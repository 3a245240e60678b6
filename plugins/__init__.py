"""Built-in plugins: one package per method family, plus the shared model adapters."""
