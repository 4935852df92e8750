"""Prices (`pipeline/models/prices.py`): the reference table, overrides and cost arithmetic."""

import pytest

from pipeline.models.prices import Price, find_price


def test_reference_price_and_arithmetic():
    price = find_price("meta-llama/Meta-Llama-3.1-8B-Instruct")
    assert (price.input, price.output) == (0.055, 0.055) and "deepinfra" in price.source
    # 1,000 prompt + 500 completion tokens at $0.055/M each
    assert price.cost(1000, 500) == pytest.approx(1500 * 0.055 / 1e6)
    assert Price(0.10, 0.40).cost(2_000_000, 1_000_000) == pytest.approx(0.20 + 0.40)


def test_price_overrides_and_providers():
    p = find_price("meta-llama/Meta-Llama-3.1-8B-Instruct", provider="together")
    assert p.input == 0.18
    p = find_price("meta-llama/Meta-Llama-3.1-8B-Instruct", price_output=1.0)
    assert (p.input, p.output) == (0.055, 1.0)
    assert find_price("some/unknown-model") is None
    assert find_price("some/unknown-model", price_input=0.5).input == 0.5
    with pytest.raises(ValueError, match="--price-input"):
        find_price("meta-llama/Meta-Llama-3.1-8B-Instruct", provider="nobody")
