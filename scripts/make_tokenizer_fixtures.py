#!/usr/bin/env python3
"""Writes the tokenizer parity fixtures that tests/test_tokenizer.cpp reads (tests/fixtures/tokenizer/).

The oracle is Hugging Face `tokenizers` itself (0.23.3 when these were made):
  - tiny-bpe.json and tiny-split.json: two small byte-level BPE tokenizers trained here with the
    library, to cover what the GPT-NeoX file does not: merges as pairs, add_prefix_space,
    added tokens with lstrip/rstrip/single_word, normalized added tokens that NFC changes, a
    Llama-3-style Split + ByteLevel(use_regex=false) pre-tokenizer with ignore_merges.
  - tiny-unk.json: tiny-split with four byte tokens renamed, so those bytes take a fused unk_token.
  - parity.json: for each tokenizer file, texts and the ids `encode(text, add_special_tokens=False)`
    gives, and id lists with what `decode(ids, skip_special_tokens=...)` gives, both ways.

gpt-neox-20b.json (EleutherAI/gpt-neox-20b, the tokenizer of the Mamba2 models) is committed as is.
Texts use characters of Unicode 14 or older (PCRE2 10.42's \\p{L} and \\p{N} are Unicode 14;
Oniguruma's may be newer), plus combining marks newer than `tokenizers`' own NFC tables, which it
leaves unnormalized (scripts/make_nfc_exceptions.py).

Run from anywhere: python3 scripts/make_tokenizer_fixtures.py
"""
import json
import pathlib
import random

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizer"

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged, that a single "
    "man in possession of a good fortune, must be in want of a wife. However little known the feelings or "
    "views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some one or other "
    "of their daughters.\n\n\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that "
    "Netherfield Park is let at last?\"\nMr. Bennet replied that he had not. — Chapter 1, p. 3 (1813)."
)

PYTHON = '''import os
from typing import Optional


class Cache:
    """A tiny LRU cache."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._items: dict[str, bytes] = {}

    def get(self, key: str) -> Optional[bytes]:
        if key not in self._items:
            return None
        value = self._items.pop(key)
        self._items[key] = value  # move to the end
        return value

\tdef tabbed(self):
\t\treturn [i ** 2 for i in range(10) if i % 3 != 0]


if __name__ == "__main__":
    c = Cache(capacity=2); c._items["a"] = b"\\x00\\xff"
    print(f"{c.get('a')!r:>10}", os.getcwd())
'''

CPP = '''#include <vector>
#include <cstdint>

namespace demo {

template <class T>
T sum(const std::vector<T>& v) {
  T s{};
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0) continue;   // skip negatives
    s += v[i] * 2 - 1;
  }
  return s;
}

}  // namespace demo
int main(){return demo::sum<int>({1,-2,3})!=0;}\r\n'''

WORLD = [
    "漢字のテキスト、日本語の文章です。東京は日本の首都です。",
    "中文文本：我们今天去公园散步，天气很好！",
    "한국어 텍스트입니다. 안녕하세요, 만나서 반갑습니다.",
    "النص العربي: مرحبا بالعالم، كيف حالك؟ ١٢٣٤",
    "עברית: שלום עולם! מה שלומך?",
    "हिन्दी पाठ: नमस्ते दुनिया, आप कैसे हैं? १२३",
    "ภาษาไทย สวัสดีครับ",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ελληνικά: Γειά σου Κόσμε",
    "Tiếng Việt: Xin chào thế giới, tôi tên là Nguyễn.",
    "emoji 😀😃😄 👍👍🏽👍🏿 👨‍👩‍👧‍👦 👩🏽‍💻 🏳️‍🌈 🇯🇵🇺🇸🇩🇪 🏴󠁧󠁢󠁳󠁣󠁴󠁿 ❤️ ✔︎",
    "math ∑∫√∞≠≤≥ ½ ¾ ① ② Ⅻ x² H₂O ℕ ℝ",
    "currency $100 €200 £300 ¥400 ₹500 ₿",
]

UNICODE_EDGE = [
    "e\u0301", "cafe\u0301 au lait", "A\u030a", "\u212b", "\u0344", "\u1100\u1161\u11a8", "\u1100\u1161 \u1112\u1161\u11ab",
    "o\u0308\u0301", "\u0915\u094d\u0937", "a\u0323\u0307", "\ufb01 ligature", "\u2126 ohm", "ｆｕｌｌｗｉｄｔｈ",
    "!\u0085!", "!\u00a0!", "a\u00a0 b", "!\u1680!", "!\u180e!", "!\u200b!", "!\u2028!", "!\u2029!", "!\u202f!",
    "!\u205f!", "!\u3000!", "!\ufeff!", "!\x1c!", "!\x1f!", "!\x0b!", "!\x0c!", "\x00", "a\x00b", "\x01\x02\x7f",
    "\ud7ff\ue000\uffff", "\U0001f600\U0010ffff", "zero\u200dwidth\u200cjoiner",
    # Marks and a composition newer than tokenizers' NFC tables: it neither reorders nor composes them.
    "j\u0301\u1df9", "N\u1df7\u031e", "a\u0301\u1df9", "\U00011935\U00011930", "x\u0301\u1ac0\u0316",
]

CONTRACTIONS = [
    "'s 't 're 've 'm 'll 'd", "'S 'T 'RE 'VE 'M 'LL 'D", "don't won't I'm you're we've they'll she'd it's",
    "DON'T I'M", "y'all 'tis", "’s ’t", "'''", "''s", "' s", "a's'", "Mr. O'Neil's", "rock'n'roll",
]

NUMBERS = [
    "1234567890", "3.14159", "1,000,000", "-42", "1e-10", "0x1F", "٣٤٥", "१२३", "①②③", "½", "2024-11-30",
    "12:30:45", "v1.2.3", "10%", "#1", "123abc456", "abc123def",
]

SPECIAL = {
    "gpt-neox-20b.json": [
        "a<|endoftext|>b", "<|padding|>", "<|endoftext|><|endoftext|>", "<|endoftext|><|padding|>",
        " <|endoftext|> ", "<|endoftext", "endoftext|>", "<|endoftext|>   x", "x    <|endoftext|>",
        "<|endoftext|>\n\n", "<<|endoftext|>>", "<|endo<|endoftext|>ftext|>", "text<|padding|>    more",
    ],
    "tiny-bpe.json": [
        "<s>hello</s>", "a [MASK] b", "a[MASK]b", "a   [MASK]   b", "[MASK][MASK]", "x\t[MASK]\ny",
        "new york city", "newyork", "new york", "the new york times", "hello world", "hello  world",
        "café", "cafe\u0301", "I like café au lait", "ĠĠhiĠ", "aĠĠhiĠb", "e\u0301x and éx", "<s>",
        "a <unused> b", " <unused>", "   ", "    ", "  x  ",
    ],
    "tiny-split.json": [
        "<|begin_of_text|>Hello<|end_of_text|>", "<|begin_of_text|><|begin_of_text|>", "ab<|end_of_text|>",
        "HELLO'S world'S", "12345678901", "a\r\nb\r\n\r\nc", "   leading", "trailing   ", "tabs\t\tand  spaces",
        "x1 x12 x123 x1234", "Ünïcödé 123",
    ],
    "tiny-unk.json": [
        "a\x00b", "\x00\x01\x02\x03", "x\x00\x00 \x01y", "\x03", "ok \x02\x02\x02 ok", "<|end_of_text|>\x00",
    ],
}


def whitespace_cases():
    cases = []
    for n in range(1, 41):
        sp = " " * n
        cases += [sp, "a" + sp + "b", "a" + sp, sp + "a", "\t" * n, "\n" * n, "x" + sp + "\n" + sp + "y",
                  (" \t" * n)[:n] + "z", ("\n " * n)[:n], "a" + "\r\n" * (n % 5 + 1) + sp + "b"]
    cases += ["\r\n", "a\r\nb", "\r", "\r\r\n\n", " \r\n ", "\t \t", "\n\t\n", "  \n  \n", "x \n", "x  \n  y"]
    return cases


def long_cases():
    return ["a" * 5000, "ab" * 3000, " " * 5000, "\n" * 3000, "😀" * 500, "1" * 3000, "a " * 2000,
            "abc" * 1500 + " " + "xyz" * 1000, "é" * 2000, "日本" * 1000, "! " * 1500, "-" * 3000]


def random_cases(seed, count):
    rng = random.Random(seed)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3 + list("0123456789") * 2
                + list(" " * 20 + "\t\n\r") + list(".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
                + ["é", "e\u0301", "ñ", "ü", "ß", "ø", "\u0308", "\u0301", "日", "本", "語", "한", "글", "ア", "ـ",
                   "ب", "ש", "क", "्", "😀", "👍", "\U0001f3fd", "\u200d", "\u00a0", "\u0085", "\u2028", "\u3000",
                   "<|", "|>", "endoftext", "<|endoftext|>", "<|padding|>", "<s>", "[MASK]", "'s", "'t", "’",
                   "\u1100", "\u1161", "\u11a8", "\ufeff", "½", "٣", "\x00"])
    out = []
    for _ in range(count):
        n = rng.randint(1, 60)
        out.append("".join(rng.choice(alphabet) for _ in range(n)))
    return out


def mixed_document():
    parts = [PROSE, PYTHON, CPP] + WORLD + UNICODE_EDGE + CONTRACTIONS + NUMBERS
    rng = random.Random(7)
    rng.shuffle(parts)
    return "\n\n".join(parts) * 2


def encode_cases(name):
    cases = [("empty", "")]
    cases += [("prose", PROSE), ("python", PYTHON), ("cpp", CPP), ("mixed-document", mixed_document())]
    cases += [("world", t) for t in WORLD]
    cases += [("unicode-edge", t) for t in UNICODE_EDGE]
    cases += [("contraction", t) for t in CONTRACTIONS]
    cases += [("number", t) for t in NUMBERS]
    cases += [("whitespace", t) for t in whitespace_cases()]
    cases += [("long", t) for t in long_cases()]
    cases += [("special", t) for t in SPECIAL[name]]
    cases += [("random", t) for t in random_cases(seed=len(name), count=300)]
    return cases


def decode_cases(tok, seed):
    vocab = tok.get_vocab(with_added_tokens=True)
    ids_all = sorted(vocab.values())
    rng = random.Random(seed)
    lists = []
    for text in ["日本語", "😀👍🏽", "é", "한국어", "👨‍👩‍👧"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        lists.append(ids)
        lists += [ids[:k] for k in range(1, len(ids))]  # prefixes split characters
        lists += [ids[k:] for k in range(1, len(ids))]  # so do suffixes
        lists += [[i] for i in ids]
    byte_ids = {}
    byte_token = _bytes_to_unicode()
    for b in range(256):
        t = vocab.get(byte_token[b])
        if t is not None:
            byte_ids[b] = t
    def seq(*bs):
        return [byte_ids[b] for b in bs if b in byte_ids]
    lists += [seq(0xF0, 0x9F), seq(0xF0, 0x9F, 0x98), seq(0xE6, ord("a")), seq(0xC3), seq(0x80), seq(0xFF),
              seq(0xC0, 0xAF), seq(0xED, 0xA0, 0x80), seq(0xF4, 0x90, 0x80, 0x80), seq(0xE0, 0x80, ord("x")),
              seq(ord("a"), 0xF0, 0x9F, 0x98, ord("b")), seq(0xF0, 0x9F, 0x98, 0x80), seq(0xE2, 0x82, 0xAC, 0xE2, 0x82),
              seq(0xC3, 0xA9, 0xC3)]
    specials = [i for t, i in vocab.items() if t in {a.content for a in tok.get_added_tokens_decoder().values()}]
    lists += [specials, specials[::-1], [specials[0], ids_all[500], specials[-1]]]
    for _ in range(120):
        lists.append([rng.choice(ids_all) for _ in range(rng.randint(1, 30))])
    for _ in range(40):
        lists.append([rng.choice(specials + ids_all[:300]) for _ in range(rng.randint(1, 12))])
    out = []
    for ids in lists:
        for skip in (False, True):
            out.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    return out


def _bytes_to_unicode():
    """GPT-2's bytes_to_unicode, to find each byte's single-byte token."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def training_text():
    return [PROSE, PYTHON, CPP, mixed_document()] + WORLD * 3 + whitespace_cases()


def make_tiny_bpe():
    """ByteLevel(add_prefix_space) + NFC, merges saved as pairs, added tokens of every kind."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True, special=True, normalized=False),
                            AddedToken("e\u0301x", special=True, normalized=True)])
    tok.add_tokens([AddedToken("new york", single_word=True, normalized=True),
                    AddedToken("cafe\u0301", normalized=True),
                    AddedToken("ĠĠhiĠ", normalized=False),
                    AddedToken("<unused>", lstrip=True, normalized=False),
                    AddedToken("   ", normalized=True)])
    return tok


def make_tiny_split():
    """Llama-3 style: Split(regex, Isolated) + ByteLevel(use_regex=false), ignore_merges."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    return tok


def make_tiny_unk():
    """tiny-split with the tokens of bytes 0x00-0x03 renamed: those bytes become a fused unk_token."""
    spec = json.loads(make_tiny_split().to_str())
    model = spec["model"]
    byte_token = _bytes_to_unicode()
    used = {t for pair in model["merges"] for t in pair}
    for b, name in zip(range(4), ["<unk>", "<x1>", "<x2>", "<x3>"]):
        assert byte_token[b] not in used
        model["vocab"][name] = model["vocab"].pop(byte_token[b])
    model["unk_token"] = "<unk>"
    model["fuse_unk"] = True
    return Tokenizer.from_str(json.dumps(spec))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    make_tiny_bpe().save(str(OUT / "tiny-bpe.json"))
    make_tiny_split().save(str(OUT / "tiny-split.json"))
    parity = {"tokenizers_version": tokenizers.__version__, "files": {}}
    make_tiny_unk().save(str(OUT / "tiny-unk.json"))
    for seed, name in enumerate(["gpt-neox-20b.json", "tiny-bpe.json", "tiny-split.json", "tiny-unk.json"]):
        tok = Tokenizer.from_file(str(OUT / name))
        encode = []
        for kind, text in encode_cases(name):
            ids = tok.encode(text, add_special_tokens=False).ids
            encode.append({"name": kind, "text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
        parity["files"][name] = {"encode": encode, "decode": decode_cases(tok, seed)}
        print(f"{name}: {len(encode)} encode cases, {len(parity['files'][name]['decode'])} decode cases")
    (OUT / "parity.json").write_text(json.dumps(parity, ensure_ascii=False, separators=(",", ":")) + "\n",
                                     encoding="utf-8")


if __name__ == "__main__":
    main()
