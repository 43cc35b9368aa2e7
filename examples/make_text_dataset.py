"""Regenerate the synthetic topic-classification CSV shipped as the ``text`` example.

Run ``python examples/make_text_dataset.py``; the output is deterministic (seed 0).
"""

import csv
import random
from pathlib import Path

TOPICS = {
    "sports": "goal match team score coach league player ball referee season win stadium".split(),
    "weather": "rain snow storm wind cloud sunny forecast cold warm humid thunder fog".split(),
    "cooking": "oven bake recipe salt pepper garlic simmer dough butter flour spice boil".split(),
}
FILLER = "the a of and to in is was it for on with as at by this that very".split()
OUT = Path(__file__).resolve().parents[1] / "service" / "examples" / "data" / "topics.csv"


def main() -> None:
    """Write 300 labelled sentences of 3 to 24 tokens, split 70/15/15."""
    rng = random.Random(0)
    rows = []
    for i in range(300):
        topic = rng.choice(sorted(TOPICS))
        length = rng.randint(3, 24)
        words = [
            rng.choice(TOPICS[topic]) if rng.random() < 0.45 else rng.choice(FILLER)
            for _ in range(length)
        ]
        split = "train" if i % 20 < 14 else ("dev" if i % 20 < 17 else "test")
        rows.append({"id": f"t{i:03d}", "text": " ".join(words), "topic": topic, "split": split})
    with OUT.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "topic", "split"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
