"""Names, aliases and refs are validated before they reach MLflow, paths or URLs."""

from __future__ import annotations

import pytest

from rayml.errors import InvalidNameError
from rayml.registry import parse_ref, validate_name


@pytest.mark.parametrize("name", ["sales-model", "m_1.2", "A", "x" * 100])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "a b", "name;rm", "ünï", "a\\b", "x@y"])
def test_invalid_names_are_rejected_with_a_hint(name: str) -> None:
    with pytest.raises(InvalidNameError) as e:
        validate_name(name)
    assert "Hint:" in str(e.value)


def test_parse_ref_forms() -> None:
    assert parse_ref("sales@production") == ("sales", "production", None)
    assert parse_ref("sales:3") == ("sales", None, 3)
    assert parse_ref("sales") == ("sales", None, None)
    for bad in ("sales:x", "sales:0", "sales:-1", "sales@", "../x@production", "sales@pro/d"):
        with pytest.raises(InvalidNameError):
            parse_ref(bad)
