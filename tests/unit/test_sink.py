"""Kernel-side output routing: rank folding and the bounded log tee (remote/_sink.py)."""

from __future__ import annotations

from lepton_lab.remote._sink import LogTee, RankFolder, Sink, TextSink


class Recorder(Sink):
    """A real Sink that keeps what it is given."""

    def __init__(self):
        self.streams: list[tuple[str, str]] = []
        self.displays: list[dict] = []
        self.progresses: list[tuple] = []
        self.statuses: list[str] = []
        self.closed = False

    def stream(self, name, text):
        self.streams.append((name, text))

    def display(self, data, metadata, display_id, update):
        self.displays.append(data)

    def progress(self, *args):
        self.progresses.append(args)

    def status(self, text):
        self.statuses.append(text)

    def close(self):
        self.closed = True

    def text(self, name: str = "stdout") -> str:
        return "".join(t for n, t in self.streams if n == name)


def out(text: str) -> tuple:
    return ("stream", "stdout", text)


def test_single_rank_and_unranked_events_pass_through():
    rec = Recorder()
    folder = RankFolder(rec, world=1, all_ranks=False, tail_lines=2)
    folder.handle(0, out("a\n"))
    folder.handle(None, out("b\n"))
    folder.handle(0, ("display", {"text/plain": "1"}, {}, None, False))
    folder.finish()
    assert rec.text() == "a\nb\n"
    assert rec.displays == [{"text/plain": "1"}]


def test_rank_zero_live_other_ranks_tailed_and_folded():
    rec = Recorder()
    folder = RankFolder(rec, world=3, all_ranks=False, tail_lines=3)
    folder.handle(0, out("zero-1\n"))
    for i in range(10):
        folder.handle(1, out(f"one-{i}\n"))
    folder.handle(2, out("two-a\ntwo-b\n"))
    folder.handle(0, out("zero-2\n"))
    # rank 0 shows live, nothing from the others yet
    assert rec.text() == "zero-1\nzero-2\n"
    folder.finish()
    text = rec.text()
    assert "[rank 1] one-9\n" in text and "[rank 1] one-7\n" in text
    assert "one-6" not in text                                  # folded away
    assert "--- rank 1 (last 3 lines, 7 earlier lines folded;" in text
    assert "--- rank 2 (last 2 lines;" in text and "folded" not in text.split("--- rank 2")[1]
    assert "[rank 2] two-a\n[rank 2] two-b\n" in text
    assert text.index("--- rank 1") < text.index("--- rank 2")
    assert "--all-ranks" in text


def test_folded_rank_partial_lines_are_joined_and_flushed_at_finish():
    rec = Recorder()
    folder = RankFolder(rec, world=2, all_ranks=False, tail_lines=5)
    folder.handle(1, out("hel"))
    folder.handle(1, out("lo\nwor"))
    folder.handle(1, out("ld"))
    folder.finish()
    assert "[rank 1] hello\n[rank 1] world\n" in rec.text()


def test_all_ranks_prefixes_every_line():
    rec = Recorder()
    folder = RankFolder(rec, world=2, all_ranks=True, tail_lines=1)
    folder.handle(0, out("a\nb\n"))
    folder.handle(1, out("c\npart"))
    folder.handle(1, ("stream", "stderr", "err\n"))
    folder.handle(1, out("ial\nlast-no-newline"))
    folder.handle(1, ("display", {"text/plain": "x"}, {}, None, False))
    folder.finish()
    assert rec.text() == ("[rank 0] a\n[rank 0] b\n[rank 1] c\n[rank 1] partial\n"
                          "[rank 1] last-no-newline\n")
    assert rec.text("stderr") == "[rank 1] err\n"
    assert rec.displays == [{"text/plain": "x"}]
    assert "folded" not in rec.text()


def test_log_tee_forwards_everything_and_stays_bounded():
    rec = Recorder()
    tee = LogTee(rec, limit=100)
    for i in range(200):
        tee.stream("stdout", f"line {i:04d}\n")
    tee.display({"text/plain": "shown"}, {}, None, False)
    tee.progress("k", 1, 2, "d", 1.0)
    tee.status("note")
    tee.close()
    assert len(rec.streams) == 200 and rec.displays == [{"text/plain": "shown"}]
    assert rec.progresses == [("k", 1, 2, "d", 1.0)] and rec.statuses == ["note"]
    assert rec.closed
    assert len(tee.text) <= 100
    assert tee.text.endswith("line 0199\nshown\n")


def test_log_tee_keeps_the_tail_of_one_huge_write():
    tee = LogTee(Recorder(), limit=10)
    tee.stream("stdout", "x" * 1000 + "0123456789")
    assert tee.text == "0123456789"


def test_text_sink_and_default_handle(capsys):
    sink = TextSink()
    sink.handle(out("to-out\n"))
    sink.handle(("stream", "stderr", "to-err\n"))
    sink.handle(("display", {"text/plain": "42"}, {}, None, False))
    sink.handle(("progress", "k", 3, 3, "epochs", 2.0))
    sink.handle(("clear", False))
    captured = capsys.readouterr()
    assert captured.out == "to-out\n42\n"
    assert captured.err == "to-err\nepochs: 3/3 (2.0/s)\n"


def test_logtee_saves_throttled_progress_to_the_job_record(lepton_home):
    from lepton_lab.store import get_store

    store = get_store()
    store.create_job("j-progress", kind="cell", name=None, cluster=None, resources={},
                     source="x", source_hash="h")
    tee = LogTee(Sink())
    tee.progress("bar", 1, 10, "steps", 2.0)          # no job id yet: nothing saved
    assert store.get_job("j-progress").progress is None
    tee.job_id = "j-progress"
    tee.progress("bar", 2, 10, "steps", 2.0)
    assert store.get_job("j-progress").progress == {"n": 2, "total": 10, "desc": "steps",
                                                    "rate": 2.0}
    tee.progress("bar", 3, 10, "steps", 2.0)          # within a second: skipped
    assert store.get_job("j-progress").progress["n"] == 2
    tee.progress("bar", 10, 10, "steps", 2.0)         # the end of a bar is always saved
    assert store.get_job("j-progress").progress["n"] == 10
