#!/usr/bin/python3
"""Writes tests/peft/fixtures/pattern_cases.json: random regular expressions in the syntax of
radargate/io/pattern.hpp, random subjects, and whether Python's re.match finds a match (the
answer PEFT's pattern rule uses). Deterministic; run again only to change the cases:
    scripts/python/make_pattern_cases.py"""
import json
import os
import random
import re
import sys

rng = random.Random(20261203)
ALPHA = "ab._q"


def atom(depth):
    k = rng.random()
    if depth < 3 and k < 0.2:
        return "(" + rng.choice(["", "?:", "?P<g>"]) + regex(depth + 1) + ")"
    if k < 0.3:
        neg = rng.choice(["", "^"])
        body = "".join(rng.choice(["a", "b", "a-c", "\\.", "_", "\\d", "q"]) for _ in range(rng.randint(1, 3)))
        return "[" + neg + body + "]"
    if k < 0.4:
        return rng.choice(["\\d", "\\w", "\\s", "\\D", "\\W", "\\.", "."])
    if k < 0.45:
        return rng.choice(["^", "$"])
    return rng.choice(ALPHA.replace(".", "") + "..")


def piece(depth):
    a = atom(depth)
    if a in ("^", "$"):
        return a
    q = rng.choice(["", "", "", "*", "+", "?", "{2}", "{1,2}", "{,2}", "{2,}", "*?", "+?"])
    return a + q


def regex(depth=0):
    alts = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        alts.append("".join(piece(depth) for _ in range(rng.randint(0, 4))))
    return "|".join(alts)


def subject():
    if rng.random() < 0.3:
        return rng.choice(["model.layers.0.self_attn.q_proj", "model.layers.10.self_attn.v_proj", "q_proj", "", "a",
                           "a\n", "aaaaaaaaaaab"])
    return "".join(rng.choice("ab._q1 ") for _ in range(rng.randint(0, 8)))


cases = []
while len(cases) < 600:
    p = regex()
    try:
        cre = re.compile(p)
    except re.error:
        continue
    for _ in range(4):
        s = subject()
        cases.append({"pattern": p, "subject": s, "match": cre.match(s) is not None})
# Hand-written: PEFT-style keys pasted into .*\.KEY$, and patterns that backtrack exponentially
# (short subjects: Python's re backtracks; the tests also run them on long subjects).
for key, s in [("q_proj", "model.layers.0.self_attn.q_proj"), ("q_proj|v_proj", "model.layers.0.self_attn.v_proj"),
               ("layers\\.\\d+\\.self_attn\\.q_proj", "model.layers.12.self_attn.q_proj"),
               ("layers.1.*v_proj", "model.layers.10.self_attn.v_proj"), ("(a*)*b", "a" * 18),
               ("(a|aa)+$", "a" * 18 + "b"), ("(?:x+x+)+y", "x" * 16)]:
    p = ".*\\." + key + "$"
    cases.append({"pattern": p, "subject": s, "match": re.match(p, s) is not None})
    cases.append({"pattern": key, "subject": s, "match": re.match(key, s) is not None})
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "peft", "fixtures",
                   "pattern_cases.json")
with open(out, "w") as f:
    json.dump({"python": sys.version.split()[0], "cases": cases}, f, indent=0)
print(len(cases), "cases written to", os.path.normpath(out))
