import random

from engine.detokenize import TextStream

MIXED = "Crème brûlée 😀 naïve 你好世界 🇫🇷 ok\n  done"
LETTERS = "A B C D E F G H I"


def stream_all(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> list[str]:
    """Every push() result, then flush()."""
    stream = TextStream(tokenizer, stop)
    return [stream.push(i) for i in ids] + [stream.flush()]


def push_text(tokenizer, text: str, stop: tuple[str, ...] = ()) -> TextStream:
    stream = TextStream(tokenizer, stop)
    for token_id in tokenizer.encode(text):
        stream.push(token_id)
    return stream


def expected(tokenizer, ids: list[int], stop: tuple[str, ...] = ()) -> str:
    """The whole-sequence decode, cut before the earliest stop string."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def test_mixed_text_splits_characters_across_tokens(smollm2_tokenizer):
    # Guards the next tests: they only mean something if characters do split.
    ids = smollm2_tokenizer.encode(MIXED)
    assert any("\ufffd" in smollm2_tokenizer.decode([i]) for i in ids)


def test_deltas_never_hold_a_broken_character(smollm2_tokenizer):
    deltas = stream_all(smollm2_tokenizer, smollm2_tokenizer.encode(MIXED))
    assert not any("\ufffd" in d for d in deltas)


def test_deltas_add_up_to_whole_decode(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode(MIXED)
    assert "".join(stream_all(smollm2_tokenizer, ids)) == MIXED


def test_text_property_collects_emitted_deltas(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, MIXED)
    stream.flush()
    assert stream.text == MIXED


def test_stop_split_across_tokens_cuts_before_it(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, LETTERS, stop=("F G H",))
    assert stream.text == "A B C D E "


def test_stop_sets_stopped(smollm2_tokenizer):
    assert push_text(smollm2_tokenizer, LETTERS, stop=("F G H",)).stopped


def test_no_stop_leaves_stopped_false(smollm2_tokenizer):
    assert not push_text(smollm2_tokenizer, LETTERS, stop=("X Y",)).stopped


def test_push_after_stop_returns_nothing(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, LETTERS, stop=("F G H",))
    assert stream.push(smollm2_tokenizer.encode(" more")[0]) == ""


def test_flush_after_stop_returns_nothing(smollm2_tokenizer):
    assert push_text(smollm2_tokenizer, LETTERS, stop=("F G H",)).flush() == ""


def test_stop_inside_one_token(smollm2_tokenizer):
    assert push_text(smollm2_tokenizer, "hello world", stop=("ll",)).text == "he"


def test_earliest_of_several_stops_wins(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, LETTERS, stop=("G H", "D"))
    assert stream.text == "A B C "


def test_possible_stop_prefix_is_held_back(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, "A B C D E F G", stop=("F G H",))
    assert stream.text == "A B C D E "


def test_stop_prefix_released_once_it_diverges(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, "A B C D E F G X", stop=("F G H",))
    assert stream.text == "A B C D E F G X"


def test_flush_releases_unfinished_stop_prefix(smollm2_tokenizer):
    stream = push_text(smollm2_tokenizer, "A B C D E F G", stop=("F G H",))
    assert stream.flush() == "F G"


def test_flush_emits_trailing_broken_character_as_decoded(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("ok 😀")[:-1]
    stream = TextStream(smollm2_tokenizer, ())
    for token_id in ids:
        stream.push(token_id)
    assert stream.text + stream.flush() == smollm2_tokenizer.decode(ids)


def test_special_tokens_are_skipped(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = tok.encode("hi") + [tok.convert_tokens_to_ids("<|im_start|>")]
    ids += tok.encode(" there")
    assert "".join(stream_all(tok, ids)) == "hi there"


class CountingTokenizer:
    """Wraps a tokenizer and remembers the longest id list it was asked to decode."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.longest = 0

    def decode(self, token_ids, skip_special_tokens: bool) -> str:
        self.longest = max(self.longest, len(token_ids))
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)


def test_decode_window_does_not_grow_with_output(smollm2_tokenizer):
    counting = CountingTokenizer(smollm2_tokenizer)
    stream_all(counting, smollm2_tokenizer.encode(MIXED * 20))
    assert counting.longest < 10


def random_text(rng: random.Random) -> str:
    alphabet = "ab cdé\n😀你好 ñ🇫🇷.,'"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30)))


def test_concatenation_matches_decode_for_random_text(smollm2_tokenizer):
    rng = random.Random(0)
    for _ in range(200):
        ids = smollm2_tokenizer.encode(random_text(rng))
        stop = (random_text(rng)[:3],) if rng.random() < 0.5 else ()
        got = "".join(stream_all(smollm2_tokenizer, ids, stop))
        assert got == expected(smollm2_tokenizer, ids, stop), (ids, stop)


def test_concatenation_matches_decode_for_random_ids(smollm2_tokenizer):
    # Arbitrary ids, as a badly behaved model might produce: invalid UTF-8 and
    # special tokens included.
    rng = random.Random(1)
    vocab = len(smollm2_tokenizer)
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 30))]
        got = "".join(stream_all(smollm2_tokenizer, ids))
        assert got == expected(smollm2_tokenizer, ids), ids
