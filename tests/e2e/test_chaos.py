"""The fast subset of `make chaos`: a few rounds of kills, two writers, dry runs during a run, a
full disk, SIGTERM/SIGINT while reading, files whose names display alike, and kills during the
first manifest write, over fuzzed, partitioned inputs with image rows; no line may be lost or get
two rows."""

import chaos


def test_chaos_fast_subset():
    result = chaos.run(rounds=8, seed=7, rows=300)
    assert result["duplicated"] == 0 and result["lost"] == 0, result
    assert result["rows out"] == result["rows in"] and result["debris files"] == 0, result
    assert result["foreign files lost"] == 0 and result["final exit"] == 0, result
    assert result["runs"] >= 9 and result["error rows"] > 0 and result["kills"] >= 1, result
    assert result["round signal"] >= 1 and result["colliding duplicated"] == 0, result
    assert result["colliding rows out"] == result["colliding rows in"] > 0, result
    assert result["first manifest kills"] >= 1 and result["image rows"] > 0, result
