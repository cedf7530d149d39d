# The cffi extension (efird._cext) is built by setuptools through cffi's
# `cffi_modules` hook, so `pip install .` compiles cext/ like any other package.
from setuptools import setup

setup(cffi_modules=["cext/build.py:ffibuilder"])
