"""BM25F lexical retrieval over item fields, stemmed and typo tolerant, updatable one item at a time.

Analysis (`Analyzer`): lower-cased runs of letters and digits, stemmed with the Snowball stemmer of
the configured language (PyStemmer; "english" by default, "none" keeps only a light plural fold),
so "lights" finds "Light" and "running" finds "run".
Chinese, Japanese and Korean text has no spaces between words, so a run of CJK characters becomes
its overlapping character bigrams (as Lucene's CJK analyzer does): "连衣裙" -> "连衣", "衣裙".

Scoring is BM25F (Robertson, Zaragoza & Taylor 2004, "Simple BM25 extension to multiple weighted
fields"): a term's frequency is summed over the fields, each weighted and length-normalised on its
own, then saturated once: tf~ = sum_f w_f tf_f / (1 - b + b len_f / avg_len_f), score = sum over
query terms of idf * tf~ (k1 + 1) / (k1 + tf~), idf = log(1 + (N - df + 0.5) / (df + 0.5)) (Lucene's,
never negative), df = documents with the term in any field. One field of weight 1 is plain BM25.

Typo tolerance: a query term that no document holds stands for the catalog's terms at the smallest
edit distance within Elasticsearch's AUTO fuzziness (terms of 3-5 characters: 1 edit, 6 or more: 2;
shorter: none) that start with the same letter (Lucene's FuzzyQuery prefixLength 1: typos in the
first letter are rare, and it divides the terms searched by about 20: an unseen misspelling costs
1-4 ms on a 280,000-term vocabulary, then is remembered), found with rapidfuzz's Levenshtein
distance ("samsun" -> "samsung"; "braket" -> "brake" or "bracket", each document scored by the better one, so "angle
braket" finds the angle bracket). A term the catalog holds is never changed.

Head term (`Analyzer.head`): what a product title or a query names, as the last term of its first
phrase, the phrase ending at a separator (, ( [ | or a spaced dash) or a connecting word ("with",
"for", ...; English words for the English and "none" analyzers, separators only for other
languages): "Mr. Coffee 12-Cup Coffee Maker with Timer" -> "maker", "coffee cup" -> "cup".
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping

import numpy as np
import Stemmer
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
# Han (incl. extension A and compatibility), Hiragana, Katakana, Hangul syllables and Jamo.
_CJK_RUN = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u1100-\u11ff]+)")
FIELDS = ("title", "brand", "category", "description")
DEFAULT_FIELD_WEIGHTS = {"title": 2.0, "brand": 1.5, "category": 1.5, "description": 1.0}
_CORRECTIONS_MAX = 10_000  # remembered typo corrections per first letter (dropped when its terms change)
_EXPANSIONS_MAX = 10  # closest catalog terms a misspelt query term may stand for
_SEPARATORS = r"[,(\[|]|\s-\s"
_HEAD_WORDS = ("with", "for", "w/", "by", "in", "and", "on")  # English: they join a product's name to its parts
_HEAD_END = {lang: re.compile(rf"\s(?:{'|'.join(map(re.escape, _HEAD_WORDS))})\s|{_SEPARATORS}", re.I)
             for lang in ("english", "none")}
_HEAD_END_OTHER = re.compile(_SEPARATORS)


def _fold(token: str) -> str:
    if len(token) > 4 and token.endswith(("ches", "shes", "xes", "sses")):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def stemmer_languages() -> list[str]:
    return sorted(Stemmer.algorithms())


class Analyzer:
    """Text -> terms; `stemmer` a Snowball language (see `stemmer_languages`) or "none"."""

    def __init__(self, stemmer: str = "english") -> None:
        if stemmer != "none" and stemmer not in stemmer_languages():
            raise ValueError(f"retriever.stemmer: {stemmer!r}; allowed: 'none', {', '.join(map(repr, stemmer_languages()))}")
        self.stemmer = stemmer
        self._head_end = _HEAD_END.get(stemmer, _HEAD_END_OTHER)
        self._local = threading.local()  # PyStemmer objects are not thread-safe: one per thread

    def _stem(self, words: list[str]) -> list[str]:
        if self.stemmer == "none":
            return [_fold(w) for w in words]
        stem = getattr(self._local, "stem", None)
        if stem is None:
            stem = self._local.stem = Stemmer.Stemmer(self.stemmer).stemWords
        return stem(words)

    def tokens(self, text: str | None) -> list[str]:
        """The terms of `text` in order (empty for None)."""
        if not text:
            return []
        out: list[str] = []
        words: list[str] = []
        for token in _TOKEN.findall(text.lower()):
            if not _CJK_RUN.search(token):
                words.append(token)
                continue
            if words:
                out.extend(self._stem(words))
                words = []
            for part in _CJK_RUN.split(token):  # "iphone手机壳" -> "iphone", "手机", "机壳"
                if not part:
                    continue
                if not _CJK_RUN.fullmatch(part):
                    out.extend(self._stem([part]))
                elif len(part) == 1:
                    out.append(part)
                else:
                    out.extend(part[i:i + 2] for i in range(len(part) - 1))
        if words:
            out.extend(self._stem(words))
        return out

    def head(self, text: str | None) -> str | None:
        """The head term of `text` (module docstring): the last term of its first phrase that has one."""
        for phrase in self._head_end.split(text or ""):
            if phrase and (terms := self.tokens(phrase)):
                return terms[-1]
        return None


_DEFAULT = Analyzer()


def tokenize(text: str | None) -> list[str]:
    """Terms of `text` by the default analyzer (English Snowball stems, CJK bigrams)."""
    return _DEFAULT.tokens(text)


def max_edits(term: str) -> int:
    """Elasticsearch's fuzziness AUTO: 0 edits below 3 characters, 1 up to 5, 2 from 6."""
    return 0 if len(term) < 3 else 1 if len(term) < 6 else 2


class BM25:
    """Inverted BM25F index over rows 0..N-1; `set_doc` adds or replaces one row's fields.

    A document is a mapping field -> text (fields outside `fields` are ignored) or a plain string,
    which goes to the first field."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, fields: Mapping[str, float] | None = None,
                 stemmer: str = "english", typo_tolerance: bool = True) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"bm25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        fields = dict(fields) if fields is not None else {"text": 1.0}
        bad = {f: w for f, w in fields.items() if not (isinstance(w, (int, float)) and w > 0)}
        if not fields or bad:
            raise ValueError(f"retriever.field_weights: weights must be > 0, got {bad or fields}")
        self.k1, self.b = k1, b
        self.fields = tuple(fields)
        self.weights = np.array([float(fields[f]) for f in self.fields])
        self.analyzer = Analyzer(stemmer)
        self.typo_tolerance = typo_tolerance
        nf = len(self.fields)
        self._postings: list[dict[str, dict[int, int]]] = [{} for _ in range(nf)]
        self._df: dict[str, int] = {}
        self._arrays: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # term -> per field (rows, tf), lazily
        self._doc_terms: dict[int, list[dict[str, int]]] = {}
        self._len = np.zeros((0, nf), dtype=np.float64)
        self._total_len = np.zeros(nf, dtype=np.float64)
        # Typo lookups, by the term's first character (a correction keeps it): the terms, a list
        # of them for rapidfuzz (rebuilt after that letter's terms change) and remembered answers.
        self._by_first: dict[str, set[str]] = {}
        self._lists: dict[str, list[str]] = {}
        self._corrections: dict[str, dict[str, tuple[str, ...]]] = {}

    @classmethod
    def build(cls, docs: list, k1: float = 1.2, b: float = 0.75, **kw) -> "BM25":
        index = cls(k1, b, **kw)
        for row, doc in enumerate(docs):
            index.set_doc(row, doc)
        return index

    @property
    def n_docs(self) -> int:
        return len(self._doc_terms)

    def set_doc(self, row: int, doc: Mapping[str, str | None] | str | None) -> None:
        """Index (or re-index) row `row` with `doc`."""
        if row < 0:
            raise ValueError(f"row must be >= 0, got {row}")
        if doc is None or isinstance(doc, str):
            doc = {self.fields[0]: doc}
        old = self._doc_terms.pop(row, None)
        if old is not None:
            for f, counts in enumerate(old):
                for tok in counts:
                    self._postings[f][tok].pop(row, None)
                    self._arrays.pop(tok, None)
                self._total_len[f] -= self._len[row, f]
            for tok in set().union(*old):
                self._df[tok] -= 1
                if not self._df[tok]:
                    del self._df[tok]
                    self._vocabulary_changed(tok, added=False)
        if row >= len(self._len):
            grown = np.zeros((max(row + 1, 2 * len(self._len)), len(self.fields)), dtype=np.float64)
            grown[: len(self._len)] = self._len
            self._len = grown
        terms = []
        for f, name in enumerate(self.fields):
            counts: dict[str, int] = {}
            for tok in self.analyzer.tokens(doc.get(name)):
                counts[tok] = counts.get(tok, 0) + 1
            terms.append(counts)
            self._len[row, f] = float(sum(counts.values()))
            self._total_len[f] += self._len[row, f]
            for tok, tf in counts.items():
                self._postings[f].setdefault(tok, {})[row] = tf
                self._arrays.pop(tok, None)
        self._doc_terms[row] = terms
        for tok in set().union(*terms):
            if tok not in self._df:
                self._df[tok] = 0
                self._vocabulary_changed(tok, added=True)
            self._df[tok] += 1

    def _vocabulary_changed(self, tok: str, added: bool) -> None:
        c = tok[0]
        bucket = self._by_first.setdefault(c, set())
        (bucket.add if added else bucket.discard)(tok)
        self._lists.pop(c, None)
        self._corrections.pop(c, None)

    def _field_arrays(self, tok: str) -> list[tuple[np.ndarray, np.ndarray]]:
        arr = self._arrays.get(tok)
        if arr is None:
            arr = []
            for post in self._postings:
                p = post.get(tok, {})
                arr.append((np.fromiter(p.keys(), dtype=np.int64, count=len(p)),
                            np.fromiter(p.values(), dtype=np.float64, count=len(p))))
            self._arrays[tok] = arr
        return arr

    def corrections(self, term: str) -> tuple[str, ...]:
        """(term,) if the catalog holds it, else the catalog's terms at the smallest edit distance
        within `max_edits` (most frequent first), else ()."""
        if term in self._df:
            return (term,)
        if not self.typo_tolerance or max_edits(term) == 0 or _CJK_RUN.search(term):
            return ()
        known = self._corrections.setdefault(term[0], {})
        if term in known:
            return known[term]
        terms = self._lists.get(term[0])
        if terms is None:
            terms = self._lists[term[0]] = sorted(self._by_first.get(term[0], ()))
        hits = process.extract(term, terms, scorer=Levenshtein.distance, score_cutoff=max_edits(term), limit=None)
        best: tuple[str, ...] = ()
        if hits:
            d = min(h[1] for h in hits)
            best = tuple(sorted((h[0] for h in hits if h[1] == d), key=lambda t: (-self._df[t], t))[:_EXPANSIONS_MAX])
        if len(known) >= _CORRECTIONS_MAX:
            known.clear()
        known[term] = best
        return best

    def query_terms(self, query: str | None) -> list[str]:
        """The distinct terms `query` is scored with (typos expanded to their corrections, unknown
        terms dropped), in order."""
        out: list[str] = []
        for group in self._query_groups(query):
            out.extend(t for t in group if t not in out)
        return out

    def _query_groups(self, query: str | None) -> list[tuple[str, ...]]:
        groups: list[tuple[str, ...]] = []
        for tok in dict.fromkeys(self.analyzer.tokens(query)):
            group = self.corrections(tok)
            if group and group not in groups:
                groups.append(group)
        return groups

    def _term_scores(self, tok: str, n: int, avg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, BM25F contribution) of one term."""
        parts_rows, parts_tf = [], []
        for f, (rows, tf) in enumerate(self._field_arrays(tok)):
            if len(rows):
                norm = 1.0 - self.b + self.b * self._len[rows, f] / avg[f]
                parts_rows.append(rows)
                parts_tf.append(self.weights[f] * tf / norm)
        if not parts_rows:
            return np.zeros(0, np.int64), np.zeros(0)
        rows = np.concatenate(parts_rows)
        tf = np.concatenate(parts_tf)
        if len(parts_rows) > 1:
            rows, inv = np.unique(rows, return_inverse=True)
            tf = np.bincount(inv, weights=tf)
        df = self._df[tok]
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        return rows, idf * tf * (self.k1 + 1.0) / (tf + self.k1)

    def scores(self, query: str, n_rows: int) -> np.ndarray:
        """BM25F score of every row 0..n_rows-1 for `query` (0 where no term matches). A misspelt
        term with several equally close corrections scores each row by the best of them."""
        out = np.zeros(n_rows, dtype=np.float64)
        n = self.n_docs
        if not n:
            return out
        avg = np.maximum(self._total_len / n, 1e-9)
        for group in self._query_groups(query):
            if len(group) == 1:
                rows, contrib = self._term_scores(group[0], n, avg)
                inside = rows < n_rows
                np.add.at(out, rows[inside], contrib[inside])
                continue
            best = np.zeros(n_rows)
            for tok in group:
                rows, contrib = self._term_scores(tok, n, avg)
                inside = rows < n_rows
                np.maximum.at(best, rows[inside], contrib[inside])
            out += best
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
