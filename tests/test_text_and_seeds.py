"""Text as the tokenizer means it, and sampling that samples (issue 14, items 3 and 4), on the embedded
stories260K model (a SentencePiece-style tokenizer whose decoder strips the first token's space)."""

import json

import pytest
import torch

from saesteer import Steerer
from saesteer.cli.main import run
from saesteer.io import escape_text, printable

PROMPT = "Once upon a time,"


@pytest.fixture(scope="module")
def st():
    return Steerer("stories260K", "stories260K")


def test_continuation_keeps_the_space_the_tokenizer_means(st):
    g = st.generate(PROMPT, max_new_tokens=3)
    assert PROMPT + g.text == "Once upon a time, there was a"
    assert st.run(PROMPT).next_token == " there"


def test_special_tokens_are_never_text_and_generation_stops_at_eos(st):
    assert st.lm.continuation([1], [1, 2, 0]) == ""
    assert "<s>" not in st.lm.continuation([1, 403], [407, 1, 403, 2])
    g = st.generate("Once upon a time", max_new_tokens=400)  # greedy reaches <s> (EOS here) at token 342
    assert g.tokens[-1] == st.lm.eos_token_id and len(g.tokens) < 400
    assert "<s>" not in g.text and "</s>" not in g.text and g.text.endswith((".", "\""))
    longer = st.generate("Once upon a time", max_new_tokens=len(g.tokens) + 5, stop_at_eos=False)
    assert "<s>" not in longer.text and len(longer.tokens) == len(g.tokens) + 5


def test_unprintable_characters_are_escaped():
    assert printable("a\x00b\x1b[31m\nc\td") == "a\\x00b\\x1b[31m\nc\td"
    assert escape_text("a\x00b\nc") == "a\\x00b\\nc"
    assert printable("café “quoted”") == "café “quoted”"


def test_sampling_without_a_seed_draws_one_and_reports_it(st):
    draws = [st.generate(None, temperature=1.0, max_new_tokens=12) for _ in range(4)]
    assert len({tuple(g.tokens) for g in draws}) > 1
    assert all(isinstance(g.seed, int) for g in draws)
    again = st.generate(None, temperature=1.0, max_new_tokens=12, seed=draws[0].seed)
    assert again.tokens == draws[0].tokens
    torch.manual_seed(3)
    a = st.generate(None, temperature=1.0, max_new_tokens=12)
    torch.manual_seed(3)
    b = st.generate(None, temperature=1.0, max_new_tokens=12)
    assert a.tokens == b.tokens and a.seed == b.seed
    assert st.generate(None, max_new_tokens=2).seed is None  # greedy: no seed involved


def test_cli_reports_the_seed_it_sampled_with(capsys):
    args = ["generate", "--model", "stories260K", "--sae", "stories260K", "--temperature", "1", "--json",
            "--prompt", PROMPT]
    assert run(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert isinstance(first["seed"], int)
    assert run([*args, "--seed", str(first["seed"])]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == first["tokens"]
    assert first["text"].startswith(" ")  # the space after "time," belongs to the continuation


def test_web_playground_reports_the_seed_it_sampled_with_and_streams_text_in_context(st):
    from saesteer.web.playground import Playground
    from saesteer.web.schemas import GenerateRequest

    pg = Playground([st])
    events = []
    req = GenerateRequest(prompt=PROMPT, clamps=[], temperature=1.0, max_new_tokens=8)
    out = pg.generate(req, {}, check=lambda: None, emit=events.append)
    assert isinstance(out["seed"], int)
    again = pg.generate(GenerateRequest(prompt=PROMPT, clamps=[], temperature=1.0, max_new_tokens=8,
                                        seed=out["seed"]), {}, check=lambda: None)
    assert again["unsteered"]["tokens"] == out["unsteered"]["tokens"]
    greedy = []
    pg.generate(GenerateRequest(prompt=PROMPT, clamps=[], max_new_tokens=3), {}, check=lambda: None,
                emit=greedy.append)
    assert greedy[-1]["unsteered"]["text"] == " there was a"  # the space SentencePiece decoding drops alone
