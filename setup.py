"""Builds the extension cmp._core from src/core (plain C) and src/module (the binding).

Knobs (environment variables):
  CMP_WERROR=1    warnings are errors
  CMP_DEBUG=1     -O0 -g, asserts on
  CMP_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
"""
import glob
import os
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    sys.exit("cmp supports Linux only")


def flag(name):
    return os.environ.get(name, "") not in ("", "0")


cflags = ["-std=c11", "-Wall", "-Wextra", "-Wswitch-enum", "-Wno-missing-field-initializers",
          "-D_GNU_SOURCE", "-fvisibility=hidden"]
ldflags = ["-pthread"]
macros = []
if flag("CMP_WERROR"):
    cflags.append("-Werror")
if flag("CMP_DEBUG"):
    cflags += ["-O0", "-g3"]
    macros.append(("CMP_DEBUG", "1"))
    # setuptools passes -DNDEBUG from the interpreter's flags; undo it.
    cflags.append("-UNDEBUG")
else:
    cflags.append("-O2")
if flag("CMP_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cflags += san
    ldflags += san

sources = sorted(glob.glob("src/core/*.c")) + sorted(glob.glob("src/module/*.c"))

setup(
    ext_modules=[
        Extension(
            "cmp._core",
            sources=sources,
            include_dirs=["src/core", "src/module"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            depends=glob.glob("src/core/*.h") + glob.glob("src/module/*.h"),
        )
    ],
)
