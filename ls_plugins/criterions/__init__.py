"""fairseq criteria: ``smoothed_ce`` and ``distillation_ce`` (registered on import)."""
import importlib
import os

for _file in sorted(os.listdir(os.path.dirname(__file__))):
    if _file.endswith(".py") and not _file.startswith("_") and _file != "common.py":
        importlib.import_module(f"{__name__}.{_file[:-3]}")
