#!/usr/bin/env python3
"""Checks inputs/tiny/tokenizer.json with Hugging Face tokenizers: it loads,
its size and special ids are those of inputs/tiny.yaml, and it gives the same
ids as vltrain's tokenizer (src/tokenizer.c) on the texts tests/test_demo
checked.  Run where `tokenizers` is installed (the GPU machine):

  VL_DEMO_IDS=ids.jsonl build/tests/test_demo DIR/demo.jsonl   # after vldemo --out DIR
  python3 tests/reference/check_tiny_tokenizer.py inputs/tiny/tokenizer.json ids.jsonl

Prints one line per failure and "N texts, N identical"; exits 1 on any difference.
"""
import json
import sys

from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
want = {"<|im_start|>": None, "<|im_end|>": None, "<|endoftext|>": None,
        "<|vision_start|>": 384, "<|vision_end|>": 385, "<|image_pad|>": 387, "<|video_pad|>": 388}
bad = 0
for t, i in want.items():
    got = tok.token_to_id(t)
    if got is None or (i is not None and got != i):
        print(f"special token {t}: id {got}, tiny.yaml says {i}")
        bad += 1
if tok.get_vocab_size(with_added_tokens=True) != 401:
    print(f"vocabulary {tok.get_vocab_size(with_added_tokens=True)}, tiny.yaml says 401")
    bad += 1
n = same = 0
with open(sys.argv[2], encoding="utf-8") as f:
    for line in f:
        rec = json.loads(line)
        ids = tok.encode(rec["text"], add_special_tokens=False).ids
        n += 1
        if ids == rec["ids"]:
            same += 1
        else:
            print(f"{rec['text']!r}: tokenizers {ids}, vltrain {rec['ids']}")
        back = tok.decode(ids, skip_special_tokens=False)
        if back != rec["text"]:
            print(f"{rec['text']!r}: tokenizers decodes to {back!r}")
            bad += 1
print(f"{n} texts, {same} identical")
sys.exit(1 if bad or same != n or n == 0 else 0)
