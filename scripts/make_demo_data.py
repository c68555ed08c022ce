#!/usr/bin/env python3
"""Writes data/demo/demo_sft.jsonl: short instruction/response pairs in the chat format.

Deterministic (fixed seed, no inputs), so re-running it reproduces the committed file byte for byte.
The examples are composed from templates with answers computed here, so they are always correct and
regular enough that a tiny model can visibly learn them.

Usage: scripts/make_demo_data.py [--held-out] [output path]
(--held-out writes data/demo/demo_eval.jsonl: conversations of another seed that are not in the training file)
"""
import json
import random
import sys
from pathlib import Path

SEED = 20240601

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("India", "New Delhi"),
    ("China", "Beijing"), ("South Korea", "Seoul"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Morocco", "Rabat"),
]

# (question, answer) pairs written for this dataset.
FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("How many continents are there?", "There are seven continents."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the opposite of up?", "The opposite of up is down."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("Which animal is known for having a trunk?", "The elephant is known for having a trunk."),
    ("What do bees make?", "Bees make honey."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for water?", "Water is H2O."),
]

DEFINITIONS = [
    ("noun", "a word that names a person, place, thing or idea"),
    ("verb", "a word that describes an action or a state"),
    ("prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
    ("triangle", "a flat shape with three straight sides"),
    ("square", "a flat shape with four equal sides and four right angles"),
    ("island", "a piece of land surrounded by water"),
    ("mammal", "a warm-blooded animal that feeds its young with milk"),
    ("thermometer", "a tool that measures temperature"),
    ("variable", "a named value in a program that can change"),
    ("function", "a named block of code that takes inputs and returns a result"),
    ("loop", "code that repeats a set of steps"),
    ("synonym", "a word with the same meaning as another word"),
    ("antonym", "a word with the opposite meaning of another word"),
    ("fraction", "a number that describes a part of a whole"),
    ("circle", "a round shape whose points are all the same distance from its centre"),
    ("planet", "a large body that orbits a star"),
]

WORDS = ["apple", "river", "garden", "yellow", "silver", "planet", "window", "pencil", "rabbit", "candle",
         "forest", "button", "orange", "ticket", "mirror", "jacket", "bridge", "castle", "dragon", "pepper",
         "basket", "carpet", "guitar", "harbor", "lemon", "tiger", "cloud", "stone", "music", "light"]

CONVERSIONS = [
    # (from unit, to unit, factor, values); values > 1 so the plural units read right
    ("kilometres", "metres", 1000, [2, 3, 5, 7, 12, 20]),
    ("metres", "centimetres", 100, [2, 4, 6, 9, 15, 30]),
    ("kilograms", "grams", 1000, [2, 3, 4, 8, 10, 25]),
    ("hours", "minutes", 60, [2, 3, 5, 6, 10, 12]),
    ("minutes", "seconds", 60, [2, 4, 5, 7, 12, 30]),
    ("feet", "inches", 12, [2, 3, 4, 6, 10, 11]),
    ("days", "hours", 24, [2, 3, 4, 5, 7, 10]),
    ("litres", "millilitres", 1000, [2, 3, 5, 6, 9, 4]),
]

CODE = [
    ("Write a Python function that returns the square of a number.",
     "def square(x):\n    return x * x"),
    ("Write a Python function that adds two numbers.",
     "def add(a, b):\n    return a + b"),
    ("Write a Python function that checks whether a number is even.",
     "def is_even(n):\n    return n % 2 == 0"),
    ("Write a Python function that reverses a string.",
     "def reverse(s):\n    return s[::-1]"),
    ("Write a Python function that returns the largest item of a list.",
     "def largest(items):\n    return max(items)"),
    ("Write a Python loop that prints the numbers 1 to 5.",
     "for i in range(1, 6):\n    print(i)"),
    ("Write a C function that returns the larger of two ints.",
     "int max_int(int a, int b) {\n    return a > b ? a : b;\n}"),
    ("Write a Python function that counts the vowels in a string.",
     "def count_vowels(s):\n    return sum(1 for c in s.lower() if c in \"aeiou\")"),
    ("Write a Python function that returns the sum of a list.",
     "def total(items):\n    return sum(items)"),
    ("Write a shell command that lists the files in the current directory.",
     "ls"),
]

SYSTEM_PROMPTS = ["You are a helpful assistant.", "Answer briefly and correctly.", "You are a patient tutor."]


def msg(role, content):
    return {"role": role, "content": content}


def arithmetic(rng):
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
    if op == "-" and b > a:
        a, b = b, a
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    q = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    return q.format(a=a, op=op, b=b), f"{a} {op} {b} = {result}.", result


def examples(rng):
    out = []
    for _ in range(120):
        q, a, _ = arithmetic(rng)
        out.append([msg("user", q), msg("assistant", a)])
    for country, capital in CAPITALS:
        q = rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.", "Which city is the capital of {c}?"])
        out.append([msg("user", q.format(c=country)), msg("assistant", f"The capital of {country} is {capital}.")])
    for src, dst, factor, values in CONVERSIONS:
        for v in values:
            q = rng.choice(["Convert {v} {s} to {d}.", "How many {d} are in {v} {s}?"])
            out.append([msg("user", q.format(v=v, s=src, d=dst)),
                        msg("assistant", f"{v} {src} is {v * factor} {dst}.")])
    for w in WORDS:
        out.append([msg("user", f"Spell the word \"{w}\" letter by letter."), msg("assistant", "-".join(w))])
        out.append([msg("user", f"Reverse the word \"{w}\"."), msg("assistant", w[::-1])])
    for q, a in FACTS:
        out.append([msg("user", q), msg("assistant", a)])
    for term, definition in DEFINITIONS:
        out.append([msg("user", f"Define \"{term}\" in one sentence."),
                    msg("assistant", f"A {term} is {definition}.")])
    for q, a in CODE:
        out.append([msg("user", q), msg("assistant", a)])
    # Multi-turn follow-ups: the second answer depends on the first.
    for _ in range(30):
        q, a, result = arithmetic(rng)
        k = rng.randint(2, 5)
        out.append([msg("user", q), msg("assistant", a),
                    msg("user", f"Now multiply that by {k}."), msg("assistant", f"{result} * {k} = {result * k}.")])
    for country, capital in rng.sample(CAPITALS, 12):
        out.append([msg("user", f"What is the capital of {country}?"),
                    msg("assistant", f"The capital of {country} is {capital}."),
                    msg("user", "How many letters does that name have?"),
                    msg("assistant", f"\"{capital}\" has {sum(c.isalpha() for c in capital)} letters.")])
    for w in rng.sample(WORDS, 10):
        out.append([msg("user", f"Reverse the word \"{w}\"."), msg("assistant", w[::-1]),
                    msg("user", "Now write it in capital letters."), msg("assistant", w[::-1].upper())])
    # A few with a system prompt.
    for conv in rng.sample(out, 40):
        conv.insert(0, msg("system", rng.choice(SYSTEM_PROMPTS)))
    rng.shuffle(out)
    return out


HELD_OUT = 48  # conversations in data/demo/demo_eval.jsonl


def held_out(train):
    """Conversations from the same templates under another seed, none of them in `train`."""
    seen = {json.dumps(c) for c in train}
    out = []
    for conv in examples(random.Random(SEED + 1)):
        if json.dumps(conv) not in seen and len(out) < HELD_OUT:
            seen.add(json.dumps(conv))
            out.append(conv)
    return out


def main():
    # --held-out: data/demo/demo_eval.jsonl, the demo's held-out file (data.eval_path; docs/operations.md).
    args = [a for a in sys.argv[1:] if a != "--held-out"]
    evaluation = len(args) < len(sys.argv[1:])
    name = "data/demo/demo_eval.jsonl" if evaluation else "data/demo/demo_sft.jsonl"
    path = Path(args[0]) if args else Path(__file__).resolve().parent.parent / name
    rng = random.Random(SEED)
    convs = examples(rng)
    if evaluation:
        convs = held_out(convs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for conv in convs:
            f.write(json.dumps({"messages": conv}, ensure_ascii=False) + "\n")
    print(f"wrote {len(convs)} conversations to {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
