#!/usr/bin/env python3
"""Deterministic corpus of hard cases for tokenizer parity tests (sftgo vs HF `tokenizers`).

Writes JSONL, one {"text": ...} per line. The same --seed always gives the same file. Categories:
multilingual prose (CJK, Arabic, Hindi, Cyrillic, accents, combining marks), code, whitespace runs
(spaces, tabs, CR/LF, trailing, mixed, Unicode spaces), digit runs, emoji (ZWJ sequences, flags,
skin tones), contractions in mixed case, punctuation runs, control characters, embedded special-
token text, very long words, and random mixtures of all of the above.

usage: gen_tokenizer_corpus.py --out corpus.jsonl [--n 20000] [--seed 1234]
"""
import argparse
import json
import random

WORDS_EN = ("the of and to in is was for that with as on by at from his her it an were which are this be "
            "or has had not but their they he she we you one all would there been who more when will can "
            "model token training data loss gradient batch learning rate optimizer weight layer attention "
            "Hello World Python Rust Linux GPU CPU API JSON HTTP URL Llama Meta OpenAI naïve café résumé "
            "don't won't isn't it's I'm you're we've they'll she'd O'Neil rock'n'roll").split()
WORDS_FR = "le la les des une être avoir été très où déjà façon garçon noël cœur élève français".split()
WORDS_DE = "Straße groß Müller über schön Fußgänger Äpfel Öl Übung weiß heißt Mädchen".split()
WORDS_RU = "привет мир это тест данные модель обучение Москва Россия язык ёлка".split()
WORDS_AR = "مرحبا العالم هذا اختبار البيانات النموذج اللغة العربية كتاب مدرسة".split()
WORDS_HI = "नमस्ते दुनिया यह परीक्षण भाषा हिन्दी विद्यालय पुस्तक क्षत्रिय".split()
WORDS_ZH = ["你好", "世界", "这是", "测试", "数据", "模型", "训练", "中文", "语言", "机器学习"]
WORDS_JA = ["こんにちは", "世界", "テスト", "データ", "カタカナ", "ひらがな", "日本語", "東京"]
WORDS_KO = ["안녕하세요", "세계", "테스트", "데이터", "모델", "한국어", "서울"]
WORDS_MISC = ["Ελληνικά", "αβγδε", "עברית", "שלום", "ไทย", "สวัสดี", "Tiếng Việt", "ổn định", "ქართული",
              "Հայերեն", "ᏣᎳᎩ", "ꦗꦮ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐁𝐨𝐥𝐝", "ﬁnance", "ǅemal", "ſtraße", "İstanbul", "ıi"]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u0327", "\u0303", "\u20dd", "\u0336", "\u093f", "\u094d", "\u0670"]
EMOJI = ["😀", "😂", "🤖", "🚀", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "👩🏻‍💻", "🏳️‍🌈", "🇫🇷", "🇯🇵", "🇺🇸", "🧑‍🤝‍🧑", "✨",
         "☕", "🫠", "#️⃣", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", " \t ", "\u00a0", "\u2028",
          "\u2029", "\u3000", "\u2009", "\u200b", "\u0085", "\u000b", "\u000c", "\u1680", "\u202f", "\u205f"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "–", "«", "»", "“", "”", "‘", "’",
                                                     "¿", "¡", "•", "→", "©", "®", "™", "§", "¶", "€", "£", "¥"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D",
                "'Re", "'rE", "'Ll", "'lL", "'Ve", "’s", "'x", "''s", "'"]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>",
            "<|reserved_special_token_247|>", "<|eot_id", "<|eot_id|", "<|", "|>", "<|unknown|>",
            "<<|eot_id|>>", "<|eot_id|><|eot_id|>"]
CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v.size(); }\n",
    "const x = await fetch(`/api/v1/items?id=${id}`);\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "fn main() {\n    println!(\"{}\", 0x1F_u8 as char);\n}\n",
    "    if (err != nil) {\n        return fmt.Errorf(\"failed: %w\", err)\n    }\n",
    "<div class=\"row\"><span id='x'>&nbsp;</span></div>\n",
    "x = [1,2,3]; y = {'a': 1, \"b\": 2.5e-3}\n",
    "$ git commit -m 'fix: off-by-one' && git push origin HEAD:refs/for/main\n",
    "\\begin{equation} E = mc^2 \\end{equation}\n",
    "// TODO(someone): handle the edge case where len == 0\n",
    "  \t  mixed_indent = True  \n",
]
CONTROL = [chr(c) for c in list(range(0, 9)) + [14, 15, 16, 27, 31, 127, 0x80, 0x9f]]


def rand_word(rng):
    pools = [WORDS_EN] * 6 + [WORDS_FR, WORDS_DE, WORDS_RU, WORDS_AR, WORDS_HI, WORDS_ZH, WORDS_JA, WORDS_KO, WORDS_MISC]
    return rng.choice(rng.choice(pools))


def prose(rng):
    out = []
    for _ in range(rng.randint(1, 30)):
        w = rand_word(rng)
        r = rng.random()
        if r < 0.05:
            w = w.upper()
        elif r < 0.1:
            w = w.capitalize()
        elif r < 0.13:
            w += rng.choice(COMBINING)
        out.append(w)
        if rng.random() < 0.15:
            out.append(rng.choice(PUNCT))
    sep = rng.choice([" ", " ", " ", "", "  "])
    return sep.join(out) + rng.choice(["", ".", "!", "?", "\n", " "])


def whitespace(rng):
    parts = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.6:
            parts.append(rng.choice(SPACES) * rng.randint(1, 5))
        else:
            parts.append(rand_word(rng))
    return "".join(parts)


def digits(rng):
    parts = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.4:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 25))))
        elif r < 0.6:
            parts.append(f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}")
        elif r < 0.7:
            parts.append("".join(rng.choice("٠١٢٣٤٥٦٧٨٩०१२३४५६७८९①②③¼½²³") for _ in range(rng.randint(1, 9))))
        else:
            parts.append(rng.choice(["2024-01-31", "12:30:59", "+1 (555) 010-9999", "v1.2.3", "0xDEADBEEF",
                                     "1e-9", "3.14159", "100%", "$1,234.56", "A1B2C3", "x86_64"]))
        parts.append(rng.choice(["", " ", ", ", "\n", "-", "abc"]))
    return "".join(parts)


def emoji(rng):
    return "".join(rng.choice(EMOJI + [" ", "ok", "!", "\n"]) for _ in range(rng.randint(1, 12)))


def contractions(rng):
    out = []
    for _ in range(rng.randint(1, 10)):
        out.append(rand_word(rng) + rng.choice(CONTRACTIONS))
        out.append(rng.choice([" ", "", "  ", "\n", " '"]))
    return "".join(out)


def punctuation(rng):
    return "".join(rng.choice(PUNCT + [" ", "\n", "a", "1"]) * rng.randint(1, 6) for _ in range(rng.randint(1, 10)))


def control(rng):
    return "".join(rng.choice(CONTROL + [" ", "a", "\n", "é", "1"]) for _ in range(rng.randint(1, 16)))


def special_text(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        parts.append(rng.choice(SPECIALS) if rng.random() < 0.5 else prose(rng)[: rng.randint(0, 30)])
        parts.append(rng.choice(["", " ", "\n", "\n\n", "  "]))
    return "".join(parts)


def long_word(rng):
    r = rng.random()
    n = rng.randint(50, 3000)
    if r < 0.2:
        return rng.choice("abcxyz") * n
    if r < 0.4:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(n))
    if r < 0.5:
        return "".join(rng.choice(WORDS_ZH)[0] for _ in range(n // 4))
    if r < 0.6:
        return rng.choice("=-*#_~.") * n
    if r < 0.7:
        return " " * n + rng.choice(["x", "", "\n"])
    if r < 0.8:
        return "".join(rng.choice("0123456789") for _ in range(n))
    if r < 0.9:
        return "".join(rng.choice("ABCDEFabcdef0123456789+/=") for _ in range(n))  # base64-like
    return "https://example.com/" + "/".join(rand_word(rng) for _ in range(n // 20)) + "?q=" + "a" * 40


def code(rng):
    return "".join(rng.choice(CODE) for _ in range(rng.randint(1, 4)))


def random_codepoints(rng):
    # Assigned, long-stable code points of many blocks (avoids surrogates and noncharacters).
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x23FF),
              (0x3040, 0x30FF), (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F)]
    out = []
    for _ in range(rng.randint(1, 20)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def mixture(rng):
    gens = [prose, whitespace, digits, emoji, contractions, punctuation, control, special_text, code,
            random_codepoints]
    return "".join(rng.choice(gens)(rng) for _ in range(rng.randint(2, 5)))


FIXED = [
    "", " ", "  ", "\n", "\r\n", "\t", "a", "'s", "'S", "I'm", "I'M", "don't", "DON'T", "x'll've",
    "hello world", " hello", "hello ", "hello  world", "hello \n world", "a\u00a0b", "a\u2028b", "a\u0085b",
    "\u0085", "x\u0085 y", "  \u0085", "12345678901", "1 23 456 7890", "<|eot_id|>", "<|begin_of_text|>hi",
    "hi<|eot_id|>\n", "a <|eot_id|> b", "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "  \n\n  ", "\n\n\n", "\r\n\r\n", "a\r\n\r\nb", " \t\n", "x  ", "x \n", "🇫🇷🇯🇵", "👨‍👩‍👧‍👦",
    "e\u0301", "ﬁ", "ǅ", "ſ", "'ſ", "İ", "K", "'K", "\u00ad", "\ufeffBOM", "\u200d", "a\u200cb",
]


def generate(n, seed):
    rng = random.Random(seed)
    gens = [(prose, 20), (code, 8), (whitespace, 10), (digits, 8), (emoji, 6), (contractions, 8),
            (punctuation, 6), (control, 4), (special_text, 8), (long_word, 2), (random_codepoints, 6),
            (mixture, 14)]
    names = [g for g, w in gens for _ in range(w)]
    texts = list(FIXED)
    while len(texts) < n:
        texts.append(rng.choice(names)(rng))
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        for t in generate(args.n, args.seed):
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
