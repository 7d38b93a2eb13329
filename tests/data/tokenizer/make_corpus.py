#!/usr/bin/env python3
"""Writes corpus.jsonl: the tokenizer test corpus, one JSON string per line
(so samples can hold newlines, tabs and odd whitespace).  Deterministic.
Mixes English prose, other scripts, code, numbers, emoji, whitespace runs,
long words, contractions in both cases, and special tokens inside text."""
import json
import random

rng = random.Random(1234)
english = ("The surgeon retracts the gallbladder while the assistant holds the grasper steady. "
           "Bleeding is controlled with bipolar forceps; the clip applier is ready. "
           "I'm sure it's fine, but we'll check: they've said they'd come. "
           "WE'LL SEE IT'S DONE, YOU'RE RIGHT, I'D GO. Don't can't won't shouldn't.").split()
scripts = [
    "胆囊切除术中，外科医生用抓钳牵拉胆囊。", "手術中に出血があり、止血を行った。", "수술 도구가 화면 왼쪽에 있습니다.",
    "Хирург удерживает желчный пузырь зажимом.", "الجراح يمسك المرارة بالملقط.", "सर्जन पित्ताशय को पकड़ता है।",
    "Ο χειρουργός κρατά τη χοληδόχο κύστη.", "ศัลยแพทย์จับถุงน้ำดี", "ñandú café naïve résumé coöperate Ångström",
    "e\u0301 versus \u00e9 (NFC should join them)", "ﬁ ligature ﬀ and full-width ＡＢＣ１２３",
]
code = [
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if __name__ == '__main__':\n\tmain()\r\n", "SELECT id, name FROM tools WHERE color = 'red';",
    "x = {\"a\": [1, 2, 3], 'b': None}", "#include <stdio.h>\nint main(void) { return 0; }",
    "fn main() { println!(\"{}\", 42); }", "    \n\n   indented after blank lines",
]
emoji = ["🙂", "🔪", "🩺", "👩🏽‍⚕️", "🇫🇷", "❤️", "🧬🧪", "😀😃😄😁"]
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>",
            "<|vision_end|>", "<think>", "</think>", "<tool_call>"]
ws = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "   \n  ", "\n\n\n", " \t \t", "\u3000"]


def number():
    k = rng.randrange(6)
    if k == 0: return str(rng.randrange(10 ** rng.randrange(1, 12)))
    if k == 1: return f"{rng.uniform(-1e4, 1e4):.{rng.randrange(0, 6)}f}"
    if k == 2: return f"{rng.randrange(1, 31)}/{rng.randrange(1, 13)}/20{rng.randrange(10, 30)}"
    if k == 3: return f"{rng.uniform(0, 1):.3e}"
    if k == 4: return "".join(rng.choice("0123456789") for _ in range(rng.randrange(12, 40)))
    return f"v{rng.randrange(10)}.{rng.randrange(20)}.{rng.randrange(99)}"


def long_word():
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(20, 80)))


pieces = [lambda: rng.choice(english), lambda: rng.choice(scripts), lambda: rng.choice(code),
          number, lambda: rng.choice(emoji), lambda: rng.choice(specials), lambda: rng.choice(ws),
          long_word, lambda: rng.choice(["'s", "'S", "'re", "'VE", "'ll", "'D", "'m"]),
          lambda: rng.choice(".,;:!?()[]{}<>\"'`~@#$%^&*-_=+|\\/"),
          lambda: "".join(rng.choice(".,;:!?-=*#") for _ in range(rng.randrange(2, 12)))]

lines = []
for i in range(5200):
    n = rng.randrange(1, 24)
    parts = []
    for _ in range(n):
        p = rng.choice(pieces)()
        parts.append(p)
        if rng.random() < 0.6:
            parts.append(" ")
    lines.append("".join(parts))
lines += ["", " ", "\n", "a", "<|im_start|>user\nhello<|im_end|>\n", "  leading and trailing  ",
          "x" * 3000, " " * 500, "\t" * 64, "\n" * 40, "😀" * 200, "abc<|endoftext|>def<|endoftext|>"]
with open("corpus.jsonl", "w", encoding="utf-8") as f:
    for s in lines:
        f.write(json.dumps(s, ensure_ascii=False) + "\n")
print(len(lines), "lines")
