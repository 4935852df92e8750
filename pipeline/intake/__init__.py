"""Bytes in, `Request | FailedRequest` out, every input line exactly once: sources.py (which files),
reader.py (rows), shapes.py and requests.py (validation), templates.py (table rows), images.py
(image parts checked ahead of the engine), limit.py (trials), order.py (the order), and stream.py,
the one stream every command reads."""
