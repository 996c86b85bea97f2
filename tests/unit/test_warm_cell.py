"""Which cells keep the kernel's warm worker, and its setting (no cluster needed)."""

from __future__ import annotations

from lepton_lab.remote._spec import CellSpec
from lepton_lab.remote._warm import _key, keep_seconds


def test_only_cpu_one_shot_cells_keep_a_worker():
    assert _key(CellSpec()) == (1.0, None)
    assert _key(CellSpec(cpus=2, memory=2**30)) == (2.0, 2**30)
    assert _key(CellSpec(gpus=1)) is None          # a GPU is never held idle
    assert _key(CellSpec(gpus=0.25)) is None
    assert _key(CellSpec(workers=2)) is None       # the warm group has its own ranks
    assert _key(CellSpec(detach=True)) is None


def test_the_setting_reads_the_environment(lepton_home, monkeypatch):
    from lepton_lab.config import reset_config

    monkeypatch.delenv("LEPTON_WARM_CELL_S", raising=False)
    reset_config()
    assert keep_seconds() == 20.0
    for text, want in (("0", 0.0), ("2.5", 2.5), ("-3", 0.0), ("soon", 20.0)):
        monkeypatch.setenv("LEPTON_WARM_CELL_S", text)
        reset_config()
        assert keep_seconds() == want, text
    reset_config()


def test_the_idle_stop_setting_reads_the_environment_the_same_way(lepton_home, monkeypatch):
    from lepton_lab.config import get_config, reset_config

    for text, want in ((None, 0.0), ("30", 30.0), ("-1", 0.0), ("never", 0.0)):
        if text is None:
            monkeypatch.delenv("LEPTON_IDLE_STOP_MINUTES", raising=False)
        else:
            monkeypatch.setenv("LEPTON_IDLE_STOP_MINUTES", text)
        reset_config()
        assert get_config().idle_stop_minutes == want, text
    reset_config()
