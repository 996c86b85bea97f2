"""What a training run records when it loses a node: the hub's log of worker groups, the
summary in the run record, the one line in the cell (no Ray: the hub is a plain class here)."""

from __future__ import annotations

from lepton_lab.training._elastic import failure_line, summarize
from lepton_lab.training._job import Hub

NODE = {"node_id": "3b25d3921d5ec594e910edae00c9b00d754ebfd3e657b9c08e8bd7c0",
        "node_ip": "10.0.0.3"}


def _train(attempt, *epochs):
    return ("train", {"attempt": attempt, "points": [[i, e, {"loss": 1.0}]
                                                      for i, e in enumerate(epochs)]})


def _start(hub, rank, world, node, resume=None):
    info = {"world": world, "node_id": node, "node_ip": "10.0.0.9"}
    if rank == 0:
        info["resume_epoch"] = resume
    return hub.start(rank, info)


def test_a_lost_node_is_recorded_with_the_new_world_and_the_replayed_epochs():
    hub = Hub()
    for rank, node in enumerate(("head", "w1", NODE["node_id"])):
        assert _start(hub, rank, 3, node, resume=0) == 1
    hub.push(0, [_train(1, 0.0, 0.5, 1.0, 1.5, 2.0)])
    hub.push(1, [_train(1, 2.25)])
    hub.note_failure({"at": 100.0, "error": "node lost: ...", "ranks_lost": [2],
                      "nodes_lost": [NODE]})
    hub.push(0, [_train(1, 2.4)])                  # a late report of the failed group: ignored
    assert _start(hub, 1, 2, "w1") == 2
    assert hub.drain(0.0)[-1][1][0] == "train"     # nothing announced before rank 0 starts
    assert _start(hub, 0, 2, "head", resume=2) == 2
    hub.push(0, [_train(2, 2.0, 3.0, 4.0)])

    out = hub.summary()
    assert out["world"] == [3, 2]
    (fail,) = out["failures"]
    assert fail["nodes_lost"] == [NODE] and fail["ranks_lost"] == [2]
    assert (fail["world_before"], fail["world_after"]) == (3, 2)
    assert fail["reached_epoch"] == 2.25 and fail["resume_epoch"] == 2
    assert fail["epochs_replayed"] == 1
    assert fail["recovery_s"] == round(fail["resumed_at"] - 100.0, 2)
    # the one line, once, as a status line of the cell (no rank prefix)
    lines = [ev for rank, ev in hub.drain(0.0) if rank is None]
    assert lines == [("stream", "stderr", "lepton: rank 2 on node 3b25d392 (10.0.0.3) lost; "
                      "continuing with 2 ranks from epoch 2 (1 epoch replayed)\n")]
    _start(hub, 0, 2, "head", resume=4)            # a later restart announces nothing new
    assert not [ev for rank, ev in hub.drain(0.0) if rank is None]


def test_a_checkpoint_still_in_flight_costs_the_epoch_before():
    log = [{"event": "start", "rank": 0, "world": 2, "resume_epoch": 0, "at": 1.0},
           {"event": "start", "rank": 1, "world": 2, "at": 1.0},
           {"event": "progress", "rank": 0, "epoch": 2.1},
           {"event": "failure", "at": 10.0, "error": "boom", "ranks_lost": [],
            "nodes_lost": []},
           {"event": "start", "rank": 0, "world": 2, "resume_epoch": 1, "at": 20.0}]
    (fail,) = summarize(log)["failures"]
    assert fail["epochs_replayed"] == 2 and fail["recovery_s"] == 10.0
    assert failure_line(fail) == ("the worker group failed (boom); continuing with 2 ranks "
                                  "from epoch 1 (2 epochs replayed)")


def test_unknowns_stay_unknown():
    log = [{"event": "start", "rank": 0, "world": 3, "at": 1.0},
           {"event": "failure", "at": 2.0, "error": None, "ranks_lost": [1],
            "nodes_lost": [NODE]}]
    out = summarize(log)
    (fail,) = out["failures"]
    assert fail["world_after"] is None and fail["epochs_replayed"] is None
    assert fail["recovery_s"] is None
    assert failure_line(fail) == "rank 1 on node 3b25d392 (10.0.0.3) lost; restarting"
    assert summarize([])["failures"] == [] and summarize([])["world"] == []
