"""MLflow's Flask routes with their URL builders compiled on first use instead of at import.

Why: Werkzeug compiles two URL-building functions (generated Python source, `compile`d) for every
route as it is added, for `url_for`. MLflow's Flask app adds ~410 routes while its module is
imported, ~80 ms of CPU in each worker's start, and the tracking server builds no URL from them.
`rules()` makes the Flask app created inside the block use a Rule class that compiles each builder
the first time it is called, with Werkzeug's own code: routing and matching are untouched, and a
URL built later is the one Werkzeug builds. If Werkzeug's private builder hook changes, the block
changes nothing. tests/unit/test_lazy_url_builders.py builds every route's URL both ways.
"""

from __future__ import annotations

import contextlib
import inspect


def _lazy_rule_class(rule_class):
    compile_builder = getattr(rule_class, "_compile_builder", None)
    if compile_builder is None or list(inspect.signature(compile_builder).parameters) != ["self", "append_unknown"]:
        return None

    class LazyBuilderRule(rule_class):
        def _compile_builder(self, append_unknown=True):
            compiled = None

            def build(rule, *args, **kwargs):
                nonlocal compiled
                if compiled is None:
                    compiled = compile_builder(rule, append_unknown).__get__(rule, None)
                return compiled(*args, **kwargs)

            return build

    return LazyBuilderRule


@contextlib.contextmanager
def rules():
    """Flask apps created inside the block compile their routes' URL builders lazily."""
    from flask import Flask

    original = Flask.url_rule_class
    lazy = _lazy_rule_class(original)
    if lazy is not None:
        Flask.url_rule_class = lazy
    try:
        yield
    finally:
        Flask.url_rule_class = original
