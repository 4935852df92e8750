"""Image rows are held in bounded memory: the prefix look-ahead, the sorted order's memory and each
engine's in-flight window are bounded in image bytes as well as in requests, and intake resolves
images a bounded number of bytes ahead."""

import itertools
import threading
import time

from conftest import until_the_reader_waits, until_waiting_in
from test_dispatcher import MemoryPool

from pipeline.engines.dispatcher import Dispatcher
from pipeline.intake import images
from pipeline.intake.images import ImagePolicy, resolve_all
from pipeline.intake.order import SortedOrder, StreamOrder
from pipeline.models.render import media_bytes
from pipeline.records import Request

URL = "data:image/png;base64," + "A" * 1000  # a request's image as intake leaves it: about 1 KB


def pictured(i, url=URL):
    content = [{"type": "text", "text": f"caption {i % 5}"}, {"type": "image_url", "image_url": {"url": url}}]
    return Request.chat(f"r{i}", "f.jsonl", i + 1, [{"role": "user", "content": content}])


WEIGHT = media_bytes(pictured(0).messages)


def test_the_look_ahead_flushes_at_its_bytes_bound_however_few_requests_it_holds():
    read = itertools.count()

    def endless():
        for i in read:
            yield pictured(i)

    ordered = StreamOrder(endless(), buffer=100_000, buffer_bytes=10 * WEIGHT)
    it = iter(ordered)
    first = [next(it) for _ in range(5)]
    until_the_reader_waits(ordered)  # it has run ahead as far as it may
    assert len(first) == 5 and next(read) < 5 * 10  # a few buffers of 10, not 100,000
    it.close()
    ordered._thread.join(10)
    assert not ordered._thread.is_alive()


def test_sorted_order_spills_at_its_bytes_bound():
    ordered = SortedOrder(iter([pictured(i) for i in range(30)]), buffer=100_000, buffer_bytes=5 * WEIGHT)
    out = list(ordered)
    assert sorted(r.custom_id for r in out) == sorted(f"r{i}" for i in range(30))
    assert len(ordered.runs) == 6  # 30 requests, 5 to a run


def test_each_engine_holds_at_most_its_bytes_bound_of_images():
    pool = MemoryPool(size=2)
    dispatcher = Dispatcher(pool, window=100, window_bytes=5 * WEIGHT, chunk=3)
    out = [x for x in dispatcher.results(pictured(i) for i in range(60)) if x is not None]
    assert sorted(r.custom_id for r, _ in out) == sorted(f"r{i}" for i in range(60))
    assert max(pool.max_held) == 5  # not 100: five requests weigh the bound
    text = Dispatcher(MemoryPool(size=1), window=8, window_bytes=1, chunk=3)
    plain = [Request.chat(f"t{i}", "f.jsonl", i + 1, [{"role": "user", "content": "hi"}]) for i in range(20)]
    assert len([x for x in text.results(iter(plain)) if x is not None]) == 20  # text weighs nothing


def test_intake_resolves_a_bounded_number_of_bytes_ahead(monkeypatch):
    """The first request's image stalls; the next ones are resolved meanwhile, but reading stops
    once they hold the bound (two images here), not after 64 requests."""
    from vlm_model import data_url, png

    url = data_url(png(8, 8))
    monkeypatch.setattr(images, "AHEAD_BYTES", 2 * len(url))
    release, done = threading.Event(), []
    real = images.resolve

    def resolve(item, policy):
        if item.line == 1:
            release.wait(30)
        out = real(item, policy)
        done.append(item.line)
        return out

    monkeypatch.setattr(images, "resolve", resolve)
    read = []

    def rows():  # each row read once the rows before it, the stalled first aside, are resolved
        for i in range(200):
            while len(done) < i - 1:
                time.sleep(0.001)
            read.append(i)
            yield pictured(i, url)

    stream = resolve_all(rows(), ImagePolicy(workers=2, ahead=64))
    consumer = threading.Thread(target=lambda: done.append(("first", next(stream).custom_id)), daemon=True)
    consumer.start()
    limit = time.monotonic() + 60  # a stand-in never called fails here, not hangs
    while len(done) < 3:  # three images resolved behind the stalled first
        assert time.monotonic() < limit, f"only {done} resolved: resolve_all did not call images.resolve"
        time.sleep(0.01)
    until_waiting_in(consumer, "wait")  # the stream waits on the stalled first's result: reading has stopped
    assert len(read) < 10, len(read)
    release.set()
    consumer.join(30)
    assert ("first", "r0") in done and len(list(stream)) == 199
