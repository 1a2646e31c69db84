"""Prompt lookup drafting: latest match, copying on past the end, the transformers mode, the device corpus."""
import pytest
import torch
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

import stip
from stip.draft_corpus import DraftCorpus, chat_template_ids


def ids(*tokens):
    return torch.tensor([tokens])


def test_latest_match_wins_and_a_loop_drafts_its_next_periods():
    seq = ids(1, 2, 9, 1, 2, 7, 5, 1, 2)
    assert stip.PromptLookup(num_tokens=3).propose(seq, 10).tolist() == [7, 5, 1], "after the latest '1 2'"
    assert stip.PromptLookup(num_tokens=3, latest=False).propose(seq, 10).tolist() == [9, 1, 2], "earliest"
    loop = ids(4, 8, 3, 8, 3)  # '8 3' repeating: the latest match is one period back, copy on cyclically
    assert stip.PromptLookup(num_tokens=5).propose(loop, 10).tolist() == [8, 3, 8, 3, 8]
    assert stip.PromptLookup(num_tokens=5).propose(loop, 2).tolist() == [8, 3], "limit caps the draft"


def test_longer_ngrams_are_preferred_and_no_match_drafts_nothing():
    seq = ids(5, 6, 1, 7, 6, 2, 5, 6)  # '5 6' matches at 0 (-> 1); '6' alone matches latest at 4 (-> 2)
    assert stip.PromptLookup(num_tokens=1).propose(seq, 5).tolist() == [1]
    assert stip.PromptLookup().propose(ids(1, 2, 3), 5).numel() == 0
    assert stip.PromptLookup().propose(ids(1), 5).numel() == 0


@pytest.mark.parametrize("seed", range(5))
def test_latest_false_is_transformers_prompt_lookup(seed):
    seq = torch.randint(0, 6, (1, 40), generator=torch.Generator().manual_seed(seed))
    for n in range(20, 41):
        lookup = PromptLookupCandidateGenerator(num_output_tokens=8, max_matching_ngram_size=2, max_length=n + 9)
        expected = lookup.get_candidates(seq[:, :n])[0][0, n:]
        assert torch.equal(stip.PromptLookup(8, 2, latest=False).propose(seq[:, :n], 8), expected)


def test_corpus_drafts_only_when_the_context_has_no_match():
    corpus = DraftCorpus([[10, 11, 12, 13, 14], [20, 21, 22]], min_ngram=2, max_ngram=3)
    lookup = stip.PromptLookup(num_tokens=4, corpus=corpus)
    assert lookup.propose(ids(3, 10, 11), 9).tolist() == [12, 13, 14], "the longest corpus n-gram's continuation"
    assert lookup.propose(ids(3, 20, 21), 9).tolist() == [22], "never runs into the next sequence"
    assert lookup.propose(ids(11, 5, 10, 11), 9).tolist() == [5, 10, 11, 5], "the context's own match first"
    assert lookup.propose(ids(3, 4, 11), 9).numel() == 0, "one shared token is below min_ngram"
    assert lookup == stip.PromptLookup(num_tokens=4), "the corpus does not enter equality"
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        DraftCorpus([[1, 2]], min_ngram=3, max_ngram=2)
    with pytest.raises(TypeError, match="stip.DraftCorpus"):
        stip.PromptLookup(corpus=[1, 2, 3])


def test_chat_template_needs_a_template():
    class Plain:
        chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        chat_template_ids(Plain())
