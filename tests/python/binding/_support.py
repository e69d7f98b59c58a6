"""Shared by the binding tests (tests/python/binding/test_*.py). Each runs as a plain script,
`python test_x.py`, printing `N passed, N failed` (ffi/tests/python_abi.rs runs them so and reads
that line), and under pytest (`pytest tests/python/binding`).

They test the binding of this checkout (integrations/python/kvtier), not an installed copy."""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
BINDING = os.path.join(ROOT, "integrations", "python")


def import_binding():
    """The checkout's `kvtier` package (its library loads on first use, from $KVTIER_LIB). Loaded
    from its file and kept out of sys.modules, so that in one pytest run with tests/python/vllm/,
    whose tests import the *installed* `kvtier`, each gets its own."""
    path = os.path.join(BINDING, "kvtier", "__init__.py")
    spec = importlib.util.spec_from_file_location("kvtier", path,
                                                  submodule_search_locations=[os.path.dirname(path)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Checks:
    """Counts checks; `what` names each failure."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def __call__(self, cond, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
            print("FAIL:", what, file=sys.stderr)
        return bool(cond)

    def assert_ok(self) -> None:
        """For pytest: fails with every failed check's message."""
        assert not self.failures, "\n".join(self.failures)


def checked(fn):
    """`fn(checks)` as a pytest test (failing with every failed check) that `run_as_script` runs too."""

    def test():
        checks = Checks()
        fn(checks)
        checks.assert_ok()

    test.__name__, test.__qualname__, test.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    test.run = fn
    return test


def run_as_script(tests) -> None:
    """Runs `tests` (made by `checked`) and exits with `N passed, N failed` (a test that raises
    counts as one failed check)."""
    checks = Checks()
    for test in tests:
        try:
            test.run(checks)
        except Exception as e:
            checks(False, f"{test.__name__} raised {type(e).__name__}: {e}")
    print(f"{checks.passed} passed, {len(checks.failures)} failed")
    sys.exit(1 if checks.failures else 0)
