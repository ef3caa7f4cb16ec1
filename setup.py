"""Build the compiled core: the Cython sources in src/ become extension modules inside mlpcore/.

Compiler directives are set here, once, for every module. To build with bounds checks, wraparound and
initialisation checks on (slow, for debugging an out-of-bounds access), set MLPCORE_DEBUG=1:

    MLPCORE_DEBUG=1 pip install -e . --no-build-isolation
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MLPCORE_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(
        "mlpcore._core",
        ["src/_core.pyx"],
        extra_compile_args=compile_args,
        # No BLAS is linked: every BLAS call goes through scipy.linalg.cython_blas at run time.
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives=directives,
        # Regenerate every time: a change of MLPCORE_DEBUG alone must reach the C code.
        force=True,
    ),
)
