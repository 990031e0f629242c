"""Package discovery for the three import roots; everything else is in pyproject.toml.

The folders ``methods/`` and ``tasks/`` install as ``mtlbench.methods`` and ``mtlbench.tasks``.
Their sub-packages are found here, so a new task family (a folder with an ``__init__.py``) ships in
the wheel without a hand-kept list.
"""

from setuptools import find_packages, setup

#: import name → folder that holds it
PACKAGE_ROOTS = {"mtlbench": "mtlbench", "mtlbench.methods": "methods", "mtlbench.tasks": "tasks"}


def packages() -> list[str]:
    found = []
    for name, folder in PACKAGE_ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(found))


if __name__ == "__main__":
    setup(packages=packages(), package_dir=PACKAGE_ROOTS)
