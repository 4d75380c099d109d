"""The text each token adds to a decoded sequence, so that words and spaces are cut where the text has them."""

from __future__ import annotations

from typing import Sequence


def token_text_fn(lm):
    """``(text, memo)``: ``text(i)`` decodes token ``i`` alone, memoised in ``memo``."""
    memo: dict[int, str] = {}

    def text(i: int) -> str:
        s = memo.get(i)
        if s is None:
            s = memo[i] = lm.decode([i])
        return s

    return text, memo


def tokens_in_context(decode, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded sequence (``decode(ids[:i+1])`` minus ``decode(ids[:i])``).

    Decoding tokens one by one loses what depends on context (SentencePiece drops the leading space of
    a lone token, so ``"▁lady"`` alone is ``"lady"``); this keeps it, so words are cut where the text's
    spaces are. A token that leaves a partial character (byte-level BPE) falls back to its lone text.
    """
    out: list[str] = []
    prev = ""
    for i in range(len(ids)):
        cur = decode(ids[:i + 1])
        out.append(cur[len(prev):] if cur.startswith(prev) else decode(ids[i:i + 1]))
        prev = cur
    return out


def token_pieces(lm, tokens: Sequence[int], context: Sequence[int] = (), *, window: int = 8) -> list[str]:
    """The text each token adds after ``context`` (e.g. the prompt's ids), so that ``prompt text + pieces``
    reads as the model wrote it: spaces survive for SentencePiece tokenizers, which drop a leading space
    when a continuation is decoded alone. Each piece is ``decode(w + [t])`` minus ``decode(w)`` for the
    ``window`` tokens ``w`` before it; where that is not a prefix (a character split across byte tokens),
    the earlier pieces give back the partial character and this piece carries it whole."""
    seq = [int(t) for t in context] + [int(t) for t in tokens]
    pieces = []
    for i in range(len(seq) - len(tokens), len(seq)):
        w = seq[max(0, i - window):i]
        prev, cur = lm.decode(w) if w else "", lm.decode(w + [seq[i]])
        if not cur.startswith(prev):
            n = 0
            while n < min(len(prev), len(cur)) and prev[n] == cur[n]:
                n += 1
            drop = len(prev) - n  # an incomplete character the earlier pieces showed: take it back from them
            for j in range(len(pieces) - 1, -1, -1):
                if drop <= 0:
                    break
                cut = min(drop, len(pieces[j]))
                pieces[j] = pieces[j][:len(pieces[j]) - cut]
                drop -= cut
            prev = prev[:n]
        pieces.append(cur[len(prev):])
    return pieces

