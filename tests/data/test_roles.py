"""The validation split's roles: the search's half and the selecting half never share a token."""

from __future__ import annotations

import pytest
import torch

from ess.data import VALID_PARTS, valid_part
from ess.errors import ConfigError


@pytest.mark.parametrize("n", [2, 11, 73_760])
def test_the_search_and_select_halves_are_disjoint_and_cover_the_split(n):
    tokens = torch.arange(n)
    search, select = valid_part(tokens, "search"), valid_part(tokens, "select")
    assert torch.equal(torch.cat([search, select]), tokens)
    assert set(search.tolist()).isdisjoint(select.tolist())
    assert torch.equal(valid_part(tokens, "all"), tokens)
    if n == 73_760:   # PTB's validation split: 36,880 tokens each
        assert len(search) == len(select) == 36_880


def test_an_unknown_part_is_one_line():
    with pytest.raises(ConfigError, match=r"^valid_part: unknown 'test' \(known: " + ", ".join(VALID_PARTS)):
        valid_part(torch.arange(4), "test")
