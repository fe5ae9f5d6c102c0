"""The one timing harness (qdg_deploy/timing.py): export's side-by-side graph timing goes through time_fn."""

from qdg_deploy.timing import interleaved_medians


def test_interleaved_medians_runs_each_callable_in_blocks_and_drops_each_blocks_first_call():
    order = []
    runs = {k: (lambda x, k=k: order.append(k)) for k in ("a", "b", "c")}
    med = interleaved_medians(runs, None, rounds=3, block=4)
    assert set(med) == {"a", "b", "c"} and all(v >= 0 for v in med.values())
    assert [order.count(k) for k in "abc"] == [12, 12, 12]  # 3 rounds x 4 calls (1 warm-up + 3 timed)
    blocks = [order[i] for i in range(0, len(order), 4)]
    assert blocks == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one callable later
