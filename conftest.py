"""Root pytest configuration: what the doctests of ``minidl/`` can collect.

``minidl/plot.py`` needs matplotlib (the ``plot`` extra) as soon as it is imported, so
without it its doctests are left out instead of failing at collection; ``pip install -e
".[test]"`` alone must give a green run.
"""

import importlib.util

collect_ignore = []
if importlib.util.find_spec("matplotlib") is None:
    collect_ignore.append("minidl/plot.py")
