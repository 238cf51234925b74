from setuptools import find_packages, setup

setup(
    name="ls_plugins",
    version="0.1.0",
    description="Label smoothing, distillation and calibration tools for fairseq and PyTorch "
                "(When Does Label Smoothing Help?, Müller, Kornblith & Hinton 2019)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ls_plugins", "ls_plugins.*"]),
    python_requires=">=3.10",
    # torch/torchvision and fairseq-fixed are installed by `make install` (see README): torch must
    # come first and fairseq-fixed is built without build isolation and without its pinned deps.
    install_requires=["numpy", "sacrebleu>=2.3", "sentencepiece", "matplotlib", "tqdm", "scikit-learn"],
    entry_points={
        "console_scripts": [
            "ls-sweep=ls_plugins.sweep_cli:main",
            "ls-cache-teacher=ls_plugins.cache_teacher:main",
            "ls-nmt-analysis=ls_plugins.translation_analysis:main",
            "ls-vision=ls_plugins.vision.train:main",
        ],
    },
)
