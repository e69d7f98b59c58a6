"""setuptools' build folders go to a temporary folder, not into this checkout: with the default
`build/`, a module deleted from the sources would still be packaged from a stale `build/lib`.
The package's metadata is in pyproject.toml."""
import atexit
import shutil
import tempfile

from setuptools import setup

_tmp = tempfile.mkdtemp(prefix="kvtier-build-")
atexit.register(shutil.rmtree, _tmp, True)
setup(options={"build": {"build_base": _tmp}, "egg_info": {"egg_base": _tmp}})
