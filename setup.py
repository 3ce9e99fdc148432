"""Build the optional compiled accelerators (ecluse/accel.py); everything else is in
pyproject.toml. Without a C compiler the build skips them and ecluse runs as
pure Python."""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: pure Python
    extensions = []
else:
    extensions = cythonize(
        [Extension(name, [path], optional=True, extra_compile_args=["-O2"])
         for name, path in (
             ("ecluse.protocol._framing", "src/ecluse/protocol/_framing.pyx"),
             ("ecluse.frontend._expressplan", "src/ecluse/frontend/_expressplan.pyx"),
         )],
        language_level=3,
        include_path=["src"],
    )

setup(ext_modules=extensions)
