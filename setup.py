from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("hf_stable_ft/version.py").read_text(), version)

setup(
    name="hf_stable_ft",
    version=version["__version__"],
    description="Stable few-sample fine-tuning of BERT-family encoders as a drop-in for the Hugging Face Trainer",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hf_stable_ft", "hf_stable_ft.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "accelerate>=1.0",
        "numpy",
        "scipy",
        "scikit-learn",
        "safetensors",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "data": ["datasets>=3.0", "evaluate"],
        "report": ["matplotlib"],
        "peft": ["peft>=0.13"],
        "notebooks": ["nbclient", "nbformat", "ipykernel"],
        "hpsearch": ["optuna", "ray[tune]"],
        "ray": ["ray[tune]"],  # hf-stable-ft sweep --backend ray (hf_stable_ft.sweep_backends.RayBackend)
        "test": ["pytest", "pytest-timeout", "datasets>=3.0", "matplotlib", "peft>=0.13",
                 "nbclient", "nbformat", "ipykernel", "optuna", "ray[tune]", "evaluate"],
        "dev": ["pytest", "pytest-timeout", "datasets>=3.0", "matplotlib", "peft>=0.13",
                "nbclient", "nbformat", "ipykernel", "optuna", "ray[tune]", "evaluate", "ruff"],
    },
    entry_points={"console_scripts": ["hf-stable-ft=hf_stable_ft.cli:main"]},
)
