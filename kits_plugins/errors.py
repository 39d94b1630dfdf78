"""The package's error for bad user input: caught by ``kits`` and printed as one line (exit code 2).

It lives on the ground floor, importing nothing, so every layer (and ``kits --help``) can use it without
loading SimpleITK or torch.
"""

from __future__ import annotations


class KitsInputError(ValueError):
    """Bad input data, arguments or environment. The message names the file (or variable) and the problem."""
