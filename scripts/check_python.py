"""Exit non-zero with one clear line unless this Python is 3.11 or newer (pyproject.toml's requires-python)."""
import sys

if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11 or newer is needed to create .venv, found {sys.version.split()[0]} "
             f"({sys.executable}); run make with PYTHON=/path/to/python3.11")
