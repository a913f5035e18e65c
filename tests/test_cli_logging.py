"""The CLI's version and messages (issue 25): ``--version``; messages go through ``logging`` under ``itcp_deploy``
so library users can silence or capture them; ``-v`` shows debug detail; a built-in model with random weights
gets a one-line warning."""

from __future__ import annotations

import logging

import pytest

import itcp_deploy
from itcp_deploy.models.registry import random_weights_note
from tests.conftest import run_cli


def test_version():
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"itcp-deploy {itcp_deploy.__version__}"


@pytest.mark.parametrize(("spec", "weights", "warns"), [
    ("torchvision:resnet18", None, True), ("timm:resnet18", None, True), ("cifar_resnet20", None, True),
    ("torchvision:resnet18", "w.pth", False), ("my_model.pt", None, False), ("pkg.mod:factory", None, False)])
def test_random_weights_note_names_the_built_in_models_only(spec, weights, warns):
    note = random_weights_note(spec, weights)
    assert (note is not None) is warns
    if warns:
        assert spec in note and "--weights" in note and "\n" not in note


def test_run_inputs_warn_through_the_package_logger(caplog, monkeypatch):
    from itcp_deploy.pipeline.from_specs import ModelSource, load_inputs

    monkeypatch.setattr(logging.getLogger("itcp_deploy"), "propagate", True)  # the CLI turns it off
    monkeypatch.setattr(logging.getLogger("itcp_deploy"), "disabled", False)  # a library's dictConfig may
    with caplog.at_level(logging.WARNING, logger="itcp_deploy"):
        load_inputs(ModelSource("cifar_resnet20", "digits"))
    notes = {(r.levelno, r.getMessage()) for r in caplog.records if "random weights" in r.getMessage()}
    assert [level for level, _ in notes] == [logging.WARNING]


@pytest.mark.parametrize(("flag", "level"), [((), logging.INFO), (("-v",), logging.DEBUG)])
def test_verbose_sets_the_package_loggers_level(flag, level):
    assert run_cli(*flag, "models")[0] == 0
    assert logging.getLogger("itcp_deploy").level == level


def test_console_handler_prints_warnings_as_one_plain_line(capsys):
    from itcp_deploy.cli.app import configure_logging

    configure_logging(False)
    logging.getLogger("itcp_deploy").warning("width [4, 8] of [[target]]")
    logging.getLogger("itcp_deploy").debug("hidden without -v")
    err = capsys.readouterr().err
    assert "warning: width [4, 8] of [[target]]" in err and "hidden" not in err
