"""Packaging beyond what pyproject.toml can say: models/ ships inside the package as
``streamer.models``, so trained weights and cards are found wherever streamer is installed."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["streamer", "streamer.*"]), "streamer.models"],
    package_dir={"streamer.models": "models"},
    package_data={"streamer": ["py.typed"], "streamer.models": ["*.npz", "*.md"]},
)
