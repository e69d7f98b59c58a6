"""kvtier-vllm depends on the `kvtier` binding of the same checkout (integrations/python), which
PEP 621 cannot say with a relative path: the dependency is computed here, at build time, as
`kvtier @ file:///<checkout>/integrations/python`, so that `pip install ./integrations/vllm`
installs both. Built away from a checkout (no ../python), it depends on `kvtier` by name.
setuptools' build folders go to a temporary folder, not into this checkout (a module deleted from
the sources would otherwise still be packaged from a stale `build/lib`).
The rest of the package's metadata is in pyproject.toml."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from setuptools import setup

_binding = Path(os.path.abspath(__file__)).parent.parent / "python"
if (_binding / "pyproject.toml").is_file() and (_binding / "kvtier" / "__init__.py").is_file():
    _kvtier = f"kvtier @ {_binding.resolve().as_uri()}"
else:
    _kvtier = "kvtier==0.1.0"

_tmp = tempfile.mkdtemp(prefix="kvtier-vllm-build-")
atexit.register(shutil.rmtree, _tmp, True)
setup(install_requires=[_kvtier],
      options={"build": {"build_base": _tmp}, "egg_info": {"egg_base": _tmp}})
