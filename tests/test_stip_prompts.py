"""The shipped prompt suite: every category present, a few prompts each, unique ids."""
import pytest

from stip.prompts import CATEGORIES, prompt_suite


def test_prompt_suite_has_every_category_and_unique_ids():
    prompts = prompt_suite()
    assert len({p.id for p in prompts}) == len(prompts)
    for category in CATEGORIES:
        chosen = prompt_suite(category)
        assert len(chosen) >= 3 and all(p.category == category and p.text.strip() for p in chosen)
    assert {p.category for p in prompts} == set(CATEGORIES)
    with pytest.raises(ValueError, match="unknown prompt category 'poetry'"):
        prompt_suite("poetry")
