"""``dynams status`` says something true of a job with no scorers, whatever its state."""

from __future__ import annotations

from dynams_service.cli import main as dynams_main

from .conftest import make_spec
from .test_state import NO_CPU, persisted


def status_of(server, job_id: str, capsys) -> str:
    assert dynams_main(["status", "--address", server.address, "--job", job_id]) == 0
    return capsys.readouterr().out


def test_status_of_restored_and_finished_jobs_says_why_they_have_no_scorers(
        local_server_factory, small_shards, tmp_path, capsys):
    state = tmp_path / "state"
    for job_id, rounds in (("fresh", 0), ("half", 1), ("all", 3)):  # a plan of 3 rounds
        persisted(state, make_spec(small_shards, job_id).model_copy(
            update={"resources": NO_CPU}), rounds=rounds)
    server = local_server_factory(state_dir=state)

    finished = status_of(server, "all", capsys)
    assert "job all  finished" in finished and "rounds done 3/3" in finished
    assert "(no scorers: every round is selected, so they were released)" in finished

    restored = status_of(server, "half", capsys)
    assert "job half  idle" in restored
    assert ("(no scorers now (released when idle, or the selector restarted); they start "
            "when weights for round 1 (epoch 2) are pushed)") in restored

    fresh = status_of(server, "fresh", capsys)
    assert "(no scorers yet: they start when weights for round 0 (epoch 1) are pushed)" in fresh
    for text in (finished, restored, fresh):
        assert "first weights push" not in text
