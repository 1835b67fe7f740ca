"""Build of npedit, including the compiled extension npedit._C (see csrc/)."""
from setuptools import setup

setup()
