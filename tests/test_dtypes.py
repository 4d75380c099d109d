"""Dtype names are parsed in one place (saesteer.dtypes) for models, SAEs, the engine and sweeps."""

import pytest
import torch

from saesteer.dtypes import COMPUTE_DTYPES, SAE_DTYPES, dtype_name, parse_dtype
from saesteer.errors import SaesteerError


def test_one_parser_for_models_and_saes():
    from saesteer.models import loading
    from saesteer.saes import registry, saelens
    from saesteer.sweep import runner

    assert loading.parse_dtype is registry.parse_dtype is saelens.parse_dtype is runner.parse_dtype is parse_dtype


@pytest.mark.parametrize("text, dtype", [("float32", torch.float32), ("torch.bfloat16", torch.bfloat16),
                                         (" Half ", torch.float16), ("float", torch.float32)])
def test_names_aliases_and_dtypes(text, dtype):
    assert parse_dtype(text) is dtype and parse_dtype(dtype) is dtype and parse_dtype(None) is None
    assert parse_dtype(dtype_name(dtype)) is dtype


def test_each_caller_says_which_names_it_takes():
    assert parse_dtype("double", allowed=SAE_DTYPES) is torch.float64
    with pytest.raises(SaesteerError, match="unknown dtype 'float64'; use one of float32, bfloat16, float16$"):
        parse_dtype("float64")  # a model does not compute in float64
    with pytest.raises(SaesteerError, match="use one of float32, float16, bfloat16, float64$"):
        parse_dtype("int8", allowed=SAE_DTYPES)
    with pytest.raises(SaesteerError, match="floating type"):
        parse_dtype(torch.int64)
    assert set(COMPUTE_DTYPES) < set(SAE_DTYPES) and dtype_name("bfloat16") == "bfloat16"
