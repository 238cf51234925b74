"""The docstring examples of the math modules are exact values: run them."""
import doctest

import pytest

import ls_plugins.calibration
import ls_plugins.losses


@pytest.mark.parametrize("module", [ls_plugins.losses, ls_plugins.calibration])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
