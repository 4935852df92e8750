"""What is known of a model without loading it: its names and context length (names.py), the
embedded model (embedded.py), LoRA adapters (adapters.py), prices (prices.py), chat rendering and
prompt tokens as vLLM does them (render.py, tokens.py), prefix digests (prefix.py), whether it
sees images (vision.py). Nothing here imports vLLM or loads weights."""
