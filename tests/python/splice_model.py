"""Python's json module on the other side of the node's alias rewrite (an independent implementation):
walks the top-level object with json's own string and value scanners, and puts the alias in place of
the value of its one "model" key, leaving every other character as it was.

    splice_model.py BODY_FILE ALIAS OUT_FILE
"""

import json
import sys
from json.decoder import WHITESPACE, scanstring


def model_value_span(text):
    decoder = json.JSONDecoder()

    def skip(i):
        return WHITESPACE.match(text, i).end()

    i = skip(0)
    assert text[i] == "{", "not an object"
    i = skip(i + 1)
    spans = []
    while text[i] != "}":
        assert text[i] == '"', f"no key at {i}"
        key, i = scanstring(text, i + 1)
        i = skip(i)
        assert text[i] == ":", f"no colon at {i}"
        i = skip(i + 1)
        _, end = decoder.raw_decode(text, i)
        if key == "model":
            spans.append((i, end))
        i = skip(end)
        if text[i] == ",":
            i = skip(i + 1)
    assert len(spans) == 1, f"{len(spans)} top-level model keys"
    return spans[0]


def main(argv):
    _, body_file, alias, out_file = argv
    text = open(body_file, "rb").read().decode("utf-8")
    start, end = model_value_span(text)
    spliced = text[:start] + json.dumps(alias, ensure_ascii=False) + text[end:]
    # The result reads as the original with only the model changed.
    expected = json.loads(text)
    expected["model"] = alias
    assert json.loads(spliced) == expected
    open(out_file, "wb").write(spliced.encode("utf-8"))


if __name__ == "__main__":
    main(sys.argv)
