"""Writes reviews.csv: the dataset demo's input table (300 product reviews), deterministically.
Rerun it to re-create the file byte for byte: `python samples/dataset-demo/make_reviews.py`."""

import csv
import random
from pathlib import Path

PRODUCTS = ["kettle", "headphones", "backpack", "desk lamp", "running shoes", "coffee grinder",
            "phone case", "blender", "keyboard", "water bottle"]
GOOD = ["works perfectly", "arrived early", "great value for the price", "feels very solid",
        "my family loves it", "exactly as described", "battery lasts for days", "easy to clean"]
BAD = ["stopped working after a week", "arrived broken", "much smaller than the photos",
       "the handle feels cheap", "customer service never answered", "way too loud",
       "the color faded quickly", "instructions were missing"]
MEH = ["does the job", "nothing special", "okay for the price", "shipping took a while"]


def review(rng: random.Random) -> tuple[str, int]:
    stars = rng.choice([1, 2, 3, 4, 5])
    pool = GOOD if stars >= 4 else BAD if stars <= 2 else MEH + GOOD[:2] + BAD[:2]
    parts = rng.sample(pool, 2)
    return f"{parts[0].capitalize()}, and {parts[1]}.", stars


def main() -> None:
    rng = random.Random(12)
    out = Path(__file__).with_name("reviews.csv")
    with out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["review_id", "product", "review", "stars", "verified"])
        for i in range(300):
            text, stars = review(rng)
            w.writerow([f"r{i:03d}", rng.choice(PRODUCTS), text, stars, "true" if rng.random() < 0.8 else "false"])
    print(out)


if __name__ == "__main__":
    main()
