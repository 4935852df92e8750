"""Dataset generation from Python with the embedded model (docs/python.md).

    python samples/python_api.py             # the real vLLM engine on SmolLM2-135M
    python samples/python_api.py fake        # the instant echo engine

Run it twice: the second run finds both jobs complete in their output folders and only reads them.
"""

import sys

import polars as pl
from pydantic import BaseModel

from pipeline import Session


class Sentiment(BaseModel):
    label: str
    confidence: float


def review_prompt(row: dict) -> list[dict]:
    """A Python template: the row's columns in, the chat messages out."""
    return [{"role": "system", "content": "Answer with JSON only."},
            {"role": "user", "content": f"Label the sentiment of this review: {row['review']}"}]


def main(engine: str = "vllm") -> None:
    reviews = pl.DataFrame({"id": [1, 2, 3], "review": ["Loved it.", "Broke after a day.", "It is a chair."]})
    topics = [{"topic": "owls"}, {"topic": "tides"}]
    with Session(model="smollm2", engine=engine, max_model_len=1024) as session:
        labelled = session.run(reviews, template=review_prompt, response_format=Sentiment, carry=["id"],
                               sample={"max_tokens": 48, "temperature": 0})
        facts = session.run(topics, template="One short fact about {{ topic }}.", sample={"max_tokens": 32})
    print(labelled.select("id", "label", "confidence", "parse_error"))
    print(facts.select("content"))


if __name__ == "__main__":
    main(*sys.argv[1:])
