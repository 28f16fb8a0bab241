"""Before any export work: Optimum is installed and accepts this environment's transformers (stdlib
and `packaging` only, so that it runs where the export extra is missing).

Optimum is edgeqa's exporter, and its release may lag the newest transformers (optimum-onnx 0.1
requires transformers < 4.58 and does not import under 5.x). Installing `edgeqa[export]` into a
transformers-5 environment would downgrade transformers there, so the fix named here is a second
environment (or the `export` Docker target), not that install.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, requires, version

from edgeqa.errors import MissingExtraError, first_line

EXPORT_ENV = (
    "export from an environment with Optimum's stack: python3 -m venv .venv-export && "
    ".venv-export/bin/pip install torch==2.13.0 'edgeqa[export]' && .venv-export/bin/edgeqa export CHECKPOINT OUTPUT "
    "(or the image: docker build --target export -t edgeqa-export .); see docs/environments.md"
)


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def transformers_ranges() -> list[tuple[str, str]]:
    """(who, specifier) for each requirement on transformers of the export stack: edgeqa's `export`
    extra and the installed Optimum packages."""
    from packaging.requirements import Requirement

    found = []
    for package, extra in (("edgeqa", "export"), ("optimum-onnx", ""), ("optimum", "")):
        try:
            lines = requires(package) or []
        except PackageNotFoundError:
            continue
        for line in lines:
            requirement = Requirement(line)
            if requirement.name.lower() != "transformers" or not requirement.specifier:
                continue
            if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
                continue
            who = f"edgeqa[{extra}]" if extra else f"{package} {_installed(package)}"
            found.append((who, str(requirement.specifier)))
    return found


def check_exporter() -> None:
    """Raise one line with the fix where Optimum is missing or refuses the installed transformers.

    Raises:
        MissingExtraError: Optimum is missing, cannot be imported, or requires another transformers.
    """
    transformers = _installed("transformers")
    if transformers is None:
        return  # the export extra is missing as a whole: `import_extra` names it
    from packaging.specifiers import SpecifierSet  # transformers depends on packaging

    for who, specifier in transformers_ranges():
        if not SpecifierSet(specifier).contains(transformers, prereleases=True):
            raise MissingExtraError(
                f"export runs on Optimum, and {who} requires transformers{specifier}, but this environment has "
                f"transformers {transformers} (installing edgeqa[export] here would replace it); {EXPORT_ENV}"
            )
    if _installed("optimum-onnx") is None:
        raise MissingExtraError(
            f"export needs Optimum's ONNX exporter (optimum-onnx), which is not installed here, next to transformers "
            f"{transformers}; {EXPORT_ENV}"
        )
    try:
        importlib.import_module("optimum.exporters.onnx")
    except Exception as e:  # an Optimum that refuses this transformers fails with ImportError, AttributeError, ...
        raise MissingExtraError(
            f"Optimum cannot be imported next to transformers {transformers} ({type(e).__name__}: {first_line(e)}); "
            f"{EXPORT_ENV}"
        ) from e
