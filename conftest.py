"""Use the roslab plugins from a checkout: load them here unless their entry points did."""

import sys

pytest_plugins = [name for name in ("fixtures.plugin", "reports.plugin") if name not in sys.modules]
