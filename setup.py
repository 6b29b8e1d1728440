"""For tools that look for a setup.py: everything is in pyproject.toml (the source of truth), which setuptools
reads; ``pip install .`` works with or without this file."""
from setuptools import setup

setup()
