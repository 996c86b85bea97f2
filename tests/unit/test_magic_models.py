"""``%lepton compress|register|models|deploy|predict|undeploy``: parsing, one-line errors and
the registry commands that need no cluster (a real IPython shell, a real store)."""

from __future__ import annotations

import pytest
import torch

from lepton_lab.errors import LeptonUsageError
from lepton_lab.notebook import _models as mm
from lepton_lab.registry import load_model, read_artifact, register_module
from lepton_lab.store import get_store


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "lepton_lab")
    yield sh
    sh.user_ns.pop("net", None)


@pytest.mark.parametrize("line, message", [
    ("compress", "needs MODEL"),
    ("compress net --prune abc", "not a number"),
    ("compress net --quantize int4", "invalid choice"),
    ("deploy", "needs MODEL"),
    ("deploy digits --autoscale 3:1", "MIN:MAX"),
    ("predict api", "needs DATA"),
    ("register net", "needs NAME"),
    ("models a b", "unrecognized arguments"),
    ("undeploy", "needs ENDPOINT"),
])
def test_mistakes_are_one_line(shell, line, message):
    with pytest.raises(Exception) as info:
        shell.run_line_magic("lepton", line)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_help_of_each_command_prints_examples(shell, capsys):
    for command in mm.COMMANDS:
        shell.run_line_magic("lepton", f"{command} -h")
        out = capsys.readouterr().out
        assert f"%lepton {command}" in out and "examples:" in out


def test_register_then_list_and_load_round_trip(shell, capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    shell.user_ns["net"] = net
    assert shell.run_line_magic("lepton", "register net digits") == "digits:1"
    # the same weights again are not a new version; changed weights are
    assert shell.run_line_magic("lepton", "register net digits") == "digits:1"
    with torch.no_grad():
        net[0].bias.add_(1.0)
    assert shell.run_line_magic("lepton", "register net digits") == "digits:2"
    capsys.readouterr()
    shell.run_line_magic("lepton", "models digits")
    table = capsys.readouterr().out
    assert "digits:2" in table and "digits:1" in table and "1,210" in table
    x = torch.randn(5, 64)
    assert torch.equal(load_model("digits:2")(x), net(x))
    assert not torch.equal(load_model("digits:1")(x), net(x))


def test_a_changed_artifact_is_refused(tmp_path):
    rec = register_module(torch.nn.Linear(4, 2), "lin")
    with open(rec.path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(LeptonUsageError, match="SHA-256 mismatch"):
        read_artifact("lin:1")


def test_register_refuses_what_is_not_a_model(shell):
    shell.user_ns["net"] = [1, 2, 3]
    with pytest.raises(Exception, match="expected a torch.nn.Module, got list"):
        shell.run_line_magic("lepton", "register net digits")
    with pytest.raises(Exception, match="no training run 'nope'"):
        shell.user_ns["net"] = torch.nn.Linear(2, 2)
        shell.run_line_magic("lepton", "register net digits --run nope")
    assert get_store().list_models() == []


def test_predict_without_a_token_in_this_session_says_how(shell):
    shell.user_ns["net"] = torch.zeros(2, 64)
    with pytest.raises(Exception, match="no token for 'api'.*--token-var"):
        shell.run_line_magic("lepton", "predict api net")
