"""Build the compiled core: the Cython sources in src/ become extension modules inside mlpcore/.

Compiler directives are set here, once, for every module. To build with bounds checks, wraparound and
initialisation checks on (slow, for debugging an out-of-bounds access), set MLPCORE_DEBUG=1:

    MLPCORE_DEBUG=1 pip install -e . --no-build-isolation

Training runs on several threads through OpenMP (-fopenmp) when the C compiler supports it (gcc does;
Apple's clang does not without libomp). Without it the core is built serial and says so in
``mlpcore._compiled.OPENMP``; MLPCORE_OPENMP=0 forces that.
"""
import os
import tempfile

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
# -fno-math-errno: sqrt needs no errno check (mlpcore never reads errno), so the optimizers' loops vectorise.
# -fno-trapping-math: mlpcore never reads the floating-point exception flags, so a multiply under a condition
# (the error through the ReLU mask) may run unconditionally and the loop vectorise. Neither changes a result.
compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno", "-fno-trapping-math"]


def openmp_flags():
    """["-fopenmp"] if the C compiler builds and links an OpenMP program with it, else []."""
    if os.environ.get("MLPCORE_OPENMP", "") == "0":
        return []
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CompileError, LinkError
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "omp.c")
        with open(source, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objects = compiler.compile([source], output_dir=folder, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, os.path.join(folder, "omp"), extra_postargs=["-fopenmp"])
        except (CompileError, LinkError):
            print("mlpcore: the C compiler has no OpenMP; training will run on one thread")
            return []
    return ["-fopenmp"]


OPENMP_FLAGS = openmp_flags()


def extension(name):
    """mlpcore.<name> from src/<name>.pyx. No BLAS is linked: every BLAS call goes through
    scipy.linalg.cython_blas at run time."""
    return Extension(f"mlpcore.{name}", [f"src/{name}.pyx"], extra_compile_args=compile_args + OPENMP_FLAGS,
                     extra_link_args=OPENMP_FLAGS,
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])


# The kernels live in src/*.pxd as inline functions; each module compiles in those it uses.
extensions = [
    extension("_compiled"),  # the entry points: training, inference, the input check
    extension("_kernels"),   # each kernel on its own, for the tests
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
