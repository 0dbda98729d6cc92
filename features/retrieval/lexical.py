"""BM25 lexical retrieval over item text, updatable one item at a time.

Documents are catalog rows. Tokens are lower-cased runs of letters and digits with a light plural
fold ("bags" -> "bag", "boxes" -> "box"), so a query for "lunch bags" finds "LUNCH BAG RED
RETROSPOT". Chinese, Japanese and Korean text has no spaces between words, so a run of CJK
characters becomes its overlapping character bigrams (as Lucene's CJK analyzer and most search
engines do): "连衣裙" -> "连衣", "衣裙", and the partial query "衣裙" matches it. Scores are Okapi BM25 (k1, b) with the Lucene idf log(1 + (N - df + 0.5) / (df + 0.5)),
which is never negative.
"""

from __future__ import annotations

import math
import re

import numpy as np

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Han (incl. extension A and compatibility), Hiragana, Katakana, Hangul syllables and Jamo.
_CJK_RUN = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u1100-\u11ff]+)")


def _fold(token: str) -> str:
    if len(token) > 4 and token.endswith(("ches", "shes", "xes", "sses")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokenize(text: str | None) -> list[str]:
    """Lower-cased, plural-folded tokens of `text` (empty for None)."""
    if not text:
        return []
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if not _CJK_RUN.search(token):
            out.append(_fold(token))
            continue
        for part in _CJK_RUN.split(token):  # "iphone手机壳" -> "iphone", "手机", "机壳"
            if not part:
                continue
            if not _CJK_RUN.fullmatch(part):
                out.append(_fold(part))
            elif len(part) == 1:
                out.append(part)
            else:
                out.extend(part[i:i + 2] for i in range(len(part) - 1))
    return out


class BM25:
    """Inverted index over rows 0..N-1; `set_doc` adds or replaces one row's text."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # token -> (rows, tf), built lazily
        self._doc_tokens: dict[int, dict[str, int]] = {}
        self._doc_len = np.zeros(0, dtype=np.float64)
        self._total_len = 0.0

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.2, b: float = 0.75) -> "BM25":
        index = cls(k1, b)
        for row, text in enumerate(texts):
            index.set_doc(row, text)
        return index

    @property
    def n_docs(self) -> int:
        return len(self._doc_tokens)

    def set_doc(self, row: int, text: str | None) -> None:
        """Index (or re-index) row `row` with `text`."""
        if row < 0:
            raise ValueError(f"row must be >= 0, got {row}")
        old = self._doc_tokens.pop(row, None)
        if old:
            for tok in old:
                self._postings[tok].pop(row, None)
                self._arrays.pop(tok, None)
            self._total_len -= self._doc_len[row]
        counts: dict[str, int] = {}
        for tok in tokenize(text):
            counts[tok] = counts.get(tok, 0) + 1
        self._doc_tokens[row] = counts
        if row >= len(self._doc_len):
            grown = np.zeros(max(row + 1, 2 * len(self._doc_len)), dtype=np.float64)
            grown[: len(self._doc_len)] = self._doc_len
            self._doc_len = grown
        length = float(sum(counts.values()))
        self._doc_len[row] = length
        self._total_len += length
        for tok, tf in counts.items():
            self._postings.setdefault(tok, {})[row] = tf
            self._arrays.pop(tok, None)

    def _array(self, tok: str) -> tuple[np.ndarray, np.ndarray]:
        arr = self._arrays.get(tok)
        if arr is None:
            post = self._postings.get(tok, {})
            arr = (np.fromiter(post.keys(), dtype=np.int64, count=len(post)),
                   np.fromiter(post.values(), dtype=np.float64, count=len(post)))
            self._arrays[tok] = arr
        return arr

    def scores(self, query: str, n_rows: int) -> np.ndarray:
        """BM25 score of every row 0..n_rows-1 for `query` (0 where no token matches)."""
        out = np.zeros(n_rows, dtype=np.float64)
        n = self.n_docs
        if not n:
            return out
        avg_len = max(self._total_len / n, 1e-9)
        for tok in set(tokenize(query)):
            rows, tf = self._array(tok)
            if not len(rows):
                continue
            idf = math.log(1.0 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = self.k1 * (1.0 - self.b + self.b * self._doc_len[rows] / avg_len)
            contrib = idf * tf * (self.k1 + 1.0) / (tf + norm)
            inside = rows < n_rows
            np.add.at(out, rows[inside], contrib[inside])
        return out

    def search(self, query: str, k: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows with a positive score: (scores (<=k,), rows (<=k,)), best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        s = self.scores(query, n_rows)
        hit = np.flatnonzero(s > 0)
        if not len(hit):
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        top = hit[np.argsort(-s[hit], kind="stable")[:k]]
        return s[top], top
