"""The vLLM tests run against the `kvtier` and `kvtier_vllm` packages installed in the vLLM venv, as
an engine gets them (`pip install ./integrations/vllm`; scripts/vllm_setup.sh, which
scripts/vllm_e2e.sh runs first, installs this checkout's), never against the sources in
integrations/. `harness` (next to this file) is importable because pytest puts this folder on
sys.path; replica.py runs as a script from here."""
import os

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

try:
    import kvtier
    import kvtier_vllm
except ImportError as e:
    raise ImportError(f"{e}: install the packages into this venv: pip install {ROOT}/integrations/python "
                      f"{ROOT}/integrations/vllm (scripts/vllm_e2e.sh does)") from e

for _m in (kvtier, kvtier_vllm):
    _src = os.path.abspath(_m.__file__)
    if _src.startswith(os.path.join(ROOT, "integrations") + os.sep):
        raise ImportError(f"{_m.__name__} imported from the sources ({_src}), not from the installed "
                          "package: drop integrations/ from PYTHONPATH")
