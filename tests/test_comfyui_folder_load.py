"""Loaded as ComfyUI loads a cloned pack (from its folder, under the folder's path as module name), the package is
also `dynaccel`: a plugin's `import dynaccel` gets this very copy, not a second one."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what ComfyUI's nodes.load_custom_node does for a folder (0.3.64): spec_from_file_location(<the folder's path with
# '.' as '_x_'>, <folder>/__init__.py), then exec_module
_LOAD = f"""
import importlib.util, sys
folder = {str(ROOT)!r}
name = folder.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, folder + "/__init__.py")
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
import dynaccel, dynaccel.core.registry, dynaccel.plugins.cache.engine
assert dynaccel is pack, (dynaccel, pack)
assert dynaccel.core.registry is sys.modules[name + ".core.registry"]
assert dynaccel.plugins.cache.engine is sys.modules[name + ".plugins.cache.engine"]
from dynaccel.plugins.cache import CacheStrategy
assert CacheStrategy is sys.modules[name + ".plugins.cache.engine"].CacheStrategy
copies = [m for m in sys.modules.values() if getattr(m, "__file__", None) and m.__file__.endswith("core/registry.py")]
assert len(set(map(id, copies))) == 1, copies
assert "teacache" in dynaccel.list_strategies() and pack.list_strategies() == dynaccel.list_strategies()
print("one copy")
"""


def test_a_folder_loaded_under_another_name_is_dynaccel_too():
    out = subprocess.run([sys.executable, "-c", _LOAD], capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("one copy")


def test_loaded_as_dynaccel_nothing_is_aliased():
    import dynaccel
    from dynaccel.core import package_alias

    assert not package_alias.alias_as_dynaccel(dynaccel)
    assert not any(isinstance(f, package_alias._AliasFinder) for f in sys.meta_path)
