"""ComfyUI nodes (built in a later issue). Importing this package never imports ComfyUI."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
