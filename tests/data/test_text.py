"""Tokenization: fixture ids, SOT/EOT framing, mask semantics, overflow handling."""


import pytest
import torch

from clipvg.data import text as text_mod
from clipvg.data.text import TextTooLongError, TokenizedText, prepare_text, tokenize

SOT, EOT = 49406, 49407  # CLIP vocabulary specials (method doc §1.4)


@pytest.fixture(scope="module")
def cases(official_cases):
    return official_cases


def _a_id() -> int:
    # "a" is one BPE token; take its id from a one-word text rather than hard-coding it.
    return int(tokenize(["a"]).tokens[0, 1])


def test_fixture_tokens_and_mask_match(cases):
    out = tokenize(list(cases["texts"]))
    assert isinstance(out, TokenizedText)
    assert out.tokens.dtype == torch.int64 and out.token_mask.dtype == torch.int64
    assert out.tokens.shape == (6, 77)
    assert torch.equal(out.tokens, cases["tokens"])
    assert torch.equal(out.token_mask, cases["token_mask"])
    assert out.truncated == 0


def test_fixture_tokens_through_prepare_text(cases):
    # The official loader lower-cases after templating; upper-casing the input must not matter.
    prepared = [prepare_text(t.upper()) for t in cases["texts"]]
    assert torch.equal(tokenize(prepared).tokens, cases["tokens"])


def test_sot_eot_placement_and_padding():
    # Five common words -> five BPE tokens, so EOT sits at index 6 and the rest is padding.
    tok = tokenize(["a photo of a dog", "dog"]).tokens
    assert tok[0, 0] == SOT and tok[0, 6] == EOT
    assert torch.all(tok[0, 1:6] < SOT) and torch.all(tok[0, 1:6] > 0)
    assert torch.all(tok[0, 7:] == 0)
    assert tok[1, 0] == SOT and tok[1, 2] == EOT and torch.all(tok[1, 3:] == 0)
    assert tok[0, 5] == tok[1, 1]  # "dog" gets the same id in both texts


def test_mask_is_id_positive_including_bang_quirk():
    # "hi !(((" -> [hi, "!", "(((</w>"]: a bare "!" (not word-final) is BPE id 0, the first byte
    # of the vocabulary, and the official id > 0 rule masks it like padding.
    out = tokenize(["hi !(((", "dog"])
    assert torch.equal(out.token_mask, (out.tokens > 0).long())
    assert out.token_mask[1].tolist()[:4] == [1, 1, 1, 0]
    assert out.tokens[0, 2] == 0 and out.tokens[0, 4] == EOT
    assert out.token_mask[0, :6].tolist() == [1, 1, 0, 1, 1, 0]


def test_truncation_keeps_first_75_and_ends_with_eot():
    long_text = " ".join(["a"] * 300)  # 300 BPE tokens
    out = tokenize(["dog", long_text, long_text + " b"])
    assert out.truncated == 2
    a = _a_id()
    for row in (1, 2):
        assert out.tokens[row, 0] == SOT and out.tokens[row, 76] == EOT
        assert torch.all(out.tokens[row, 1:76] == a)
        assert torch.all(out.token_mask[row] == 1)
    assert torch.equal(out.tokens[0], tokenize(["dog"]).tokens[0])


def test_length_boundary_75_fits_76_truncates():
    fits = tokenize([" ".join(["a"] * 75)])
    assert fits.truncated == 0 and fits.tokens[0, 76] == EOT
    over = tokenize([" ".join(["a"] * 76)])
    assert over.truncated == 1 and over.tokens[0, 76] == EOT
    # strict mode accepts exactly 75
    tokenize([" ".join(["a"] * 75)], overflow="error")


def test_strict_mode_names_index_count_and_text():
    long_text = "zebra " + " ".join(["a"] * 299)  # 300 BPE tokens
    with pytest.raises(TextTooLongError) as err:
        tokenize(["dog", long_text], overflow="error")
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "text 1" in msg and "300" in msg and "zebra a a" in msg


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_text_is_an_error_naming_the_index(bad):
    with pytest.raises(ValueError, match="text 2"):
        tokenize(["dog", "cat", bad])


def test_other_context_length():
    out = tokenize(["a photo of a dog", " ".join(["a"] * 20)], context_length=10)
    assert out.tokens.shape == (2, 10)
    assert out.tokens[0, 6] == EOT and out.tokens[0, 7:].tolist() == [0, 0, 0]
    assert out.truncated == 1 and out.tokens[1, 9] == EOT


def test_bad_arguments():
    with pytest.raises(TypeError):
        tokenize("dog")
    with pytest.raises(ValueError):
        tokenize(["dog"], overflow="drop")
    with pytest.raises(ValueError):
        prepare_text("dog", template="no placeholder")


def test_prepare_text_templates_then_lowercases():
    assert prepare_text("The DOG") == "the dog"
    assert prepare_text("Dog", "find the region that corresponds to the description {}") == (
        "find the region that corresponds to the description dog"
    )


def test_tokenizer_is_cached():
    assert text_mod._bpe_tokenizer() is text_mod._bpe_tokenizer()
