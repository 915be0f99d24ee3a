"""The optional C fast path (shipper/_speedups.c): built where a C compiler and Python's headers
are, skipped with a warning elsewhere; shipper then runs its Python twin (shipper/parsing/pino.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("shipper._speedups", ["shipper/_speedups.c"], optional=True)])
