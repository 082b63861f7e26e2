"""The command line's help and its smaller flags, as a newcomer reads and mistypes them."""

import argparse
import subprocess
import sys

import pytest

from resnetlab.cli import build_parser, main


def _commands(parser, path=()):
    """Every (sub)command's parser with its words, ``reproduce``'s aside (its own file's tests)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if path + (name,) != ("reproduce",):
                    yield from _commands(sub, path + (name,))


def _options(parser):
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [a for a in parser._actions if not isinstance(a, skip)]


def test_every_option_says_what_it_does_and_its_default():
    missing = []
    for path, parser in _commands(build_parser()):
        for action in _options(parser):
            where = f"resnetlab {' '.join(path)} {'/'.join(action.option_strings) or action.metavar or action.dest}"
            if not action.help:
                missing.append(f"{where}: no help")
            elif action.default not in (None, False, []) and (
                    "default" not in action.help or str(action.default) not in action.help):
                missing.append(f"{where}: default {action.default!r} not in {action.help!r}")
    assert not missing, "\n".join(missing)


def test_every_command_describes_itself_above_its_options():
    for path, parser in _commands(build_parser()):
        if path:
            assert parser.description, f"resnetlab {' '.join(path)} --help has no description"


def test_the_flags_of_one_meaning_have_one_name():
    """bench decode's crop side is --image-size, as everywhere else (--size still works)."""
    args = build_parser().parse_args(["bench", "decode", "--image-size", "96"])
    assert args.size == 96
    assert build_parser().parse_args(["bench", "decode", "--size", "96"]).size == 96


@pytest.mark.parametrize("port", ["70000", "-1", "80x"])
def test_serve_refuses_a_port_that_does_not_exist(port, tmp_path, capsys, monkeypatch):
    import resnetlab.serve

    # A port of 70000 was taken modulo 65536: the page came up on 4464, silently.
    monkeypatch.setattr(resnetlab.serve, "serve", lambda *a, **k: pytest.fail("served"))
    with pytest.raises(SystemExit) as stop:  # argparse's usage and error line, as for --workers -1
        main(["serve", str(tmp_path), "--port", port])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--port" in err and ("0 to 65535" in err or "whole number" in err) and "_port" not in err, err


@pytest.mark.parametrize("workers", ["-1", "100000"])
def test_workers_are_a_number_of_processes_a_machine_can_start(workers, capsys):
    """--workers 100000 tried to start that many decoding processes for one image, and hung."""
    with pytest.raises(SystemExit) as stop:
        main(["predict", "run", "a.png", "--workers", workers])
    assert stop.value.code == 2
    assert f"--workers: must be from 0 to 256 worker processes, got {workers}" in capsys.readouterr().err


def test_plot_out_as_a_folder_writes_into_it(trained_run, tmp_path, capsys):
    """-o FOLDER/ put FOLDER.png beside the folder; the curves now go inside it."""
    folder = tmp_path / "figures"
    folder.mkdir()
    assert main(["plot", str(trained_run), "-o", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["curves.csv", "curves.png", "curves.svg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


def test_predict_names_a_missing_run_before_the_images(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "no-run"), str(tmp_path / "also-missing.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-run is not a run directory" in err, err


def test_predict_refuses_a_run_directory_among_the_images(trained_run, tmp_path, capsys, monkeypatch):
    """With --pretrained every argument is an image: a run given too had its plots classified as photos."""
    import resnetlab.pretrained

    monkeypatch.setattr(resnetlab.pretrained, "load_published", lambda *a, **k: pytest.fail("loaded"))
    for argv in (["--pretrained", "resnet18", str(trained_run)], [str(trained_run), str(trained_run)]):
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is a run directory, not a folder of images" in err, err


def test_help_and_usage_errors_do_not_load_torch():
    # torch takes 1.5-2 s to import: help, and a mistyped flag, should answer before it would have loaded.
    script = (
        "import sys\n"
        "from resnetlab.cli import main\n"
        "for argv in (['--help'], ['reproduce', 'orders', '--help'], ['train', '--bogus']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "unrecognized arguments: --bogus" in done.stderr
    assert "relu_preact" in done.stdout  # the ablations' variants, listed from their torch-free table
    assert done.stderr.strip().endswith("torch not loaded")


def test_the_package_names_load_when_first_used():
    import resnetlab
    import resnetlab.model_summary

    assert resnetlab.summary is resnetlab.model_summary.summary  # the function, not its module
    assert resnetlab.create_model("resnet20").__class__ is resnetlab.ResNet
    assert resnetlab.models.create_model is resnetlab.create_model  # submodules, as an eager package gave them
    with pytest.raises(AttributeError, match="no attribute 'resnet20'"):
        resnetlab.resnet20
    # Tab completion (dir) offers the submodules not yet imported too.
    assert {"train", "evaluate", "predict", "experiments", "create_model"} <= set(dir(resnetlab))
