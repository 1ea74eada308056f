"""Package layout only (metadata is in pyproject.toml): the repository's root folders ``conf/`` and ``data_tools/``
are installed as ``avssl.conf`` and ``avssl.data_tools``, beside the packages under ``avssl/``. Every config folder
is a (namespace) package of its own, so its YAML files ship with it."""

from setuptools import find_namespace_packages, find_packages, setup

packages = find_packages(include=["avssl", "avssl.*"])
packages += ["avssl.data_tools"] + [f"avssl.data_tools.{p}" for p in find_packages(where="data_tools")]
conf = ["avssl.conf"] + [f"avssl.conf.{p}" for p in find_namespace_packages(where="conf")
                         if "__pycache__" not in p]

setup(
    packages=packages + conf,
    package_dir={"avssl.conf": "conf", "avssl.data_tools": "data_tools"},
    package_data={"avssl": ["py.typed"], **{name: ["*.yaml"] for name in conf}},
)
