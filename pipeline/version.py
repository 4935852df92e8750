"""The package's version, in a module that imports nothing: pyproject.toml reads it from here
(`[tool.setuptools.dynamic]`), and `pipeline.__version__`, `pipeline --version` and a run's
`_report.json` show it."""

__version__ = "0.1.0"
