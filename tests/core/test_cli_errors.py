"""What a newcomer meets on the command line: one `error:` line (on stderr, with the spec's file,
line and field) for every mistake they can make, bracketed text printed as written, `--version`,
and `inspect --model DIR` without naming an architecture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from bridge_core import Bridge, BridgeCoreError
from bridge_core.bridge import loading
from bridge_core.cli import build_parser, main
from bridge_core.errors import HookShapeError, ModelNotFoundError, ScaffoldError, SpecError
from bridge_core.registry import SPEC_PATH_VARIABLE
from bridge_core.spec.expressions import ExpressionError

HEAD = "name: {name}\nextends: gpt2\nmatch:\n  architectures: [{name}LM]\n"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(SPEC_PATH_VARIABLE, raising=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The gpt2 spec's tiny model saved with a word-level tokenizer (ids inside its vocabulary of 101)."""
    directory = tmp_path_factory.mktemp("tiny_gpt2_tok")
    Bridge.from_spec("gpt2", tiny=True).model.save_pretrained(directory)
    words = ["<unk>", "<bos>", "the", "tower", "is", "in", "paris"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<bos>")
    fast.save_pretrained(directory)
    return directory


def spec_file(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + body)
    return path


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# ------------------------------------------------------------------------ typed errors
def test_every_user_error_derives_from_the_base_error_and_keeps_its_old_base():
    assert issubclass(HookShapeError, BridgeCoreError) and issubclass(HookShapeError, ValueError)
    assert issubclass(ScaffoldError, BridgeCoreError) and issubclass(ScaffoldError, ValueError)
    assert issubclass(ExpressionError, BridgeCoreError) and issubclass(ExpressionError, ValueError)
    assert issubclass(ModelNotFoundError, BridgeCoreError) and issubclass(ModelNotFoundError, FileNotFoundError)
    from bridge_core.bridge.dispatch import HookShapeError as from_dispatch
    from bridge_core.scaffold import ScaffoldError as from_scaffold

    assert from_dispatch is HookShapeError and from_scaffold is ScaffoldError


# ------------------------------------------------------------------------ validate: hf_class and test_config
@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        ("hf_class: Trainer\n", 5, "hf_class", "not a model class"),
        ("hf_class: GPT2Config\n", 5, "hf_class", "GPT2LMHeadModel"),
        ("test_config:\n  attn_implementation: flash_attention_2\n", 6, "test_config.attn_implementation", "flash"),
    ],
    ids=["trainer", "config-class", "flash-attention"],
)
def test_validate_reports_an_unbuildable_model_at_its_field(tmp_path, capsys, body, line, field, words):
    path = spec_file(tmp_path, "bad", body)
    assert main(["validate", str(path)]) == 2
    printed = one_error_line(capsys)
    assert f"{path}:{line}: field '{field}'" in printed and words.lower() in printed.lower()


def test_random_model_raises_a_located_spec_error_in_process(tmp_path):
    spec, _ = loading.spec_from(spec_file(tmp_path, "trainer", "hf_class: Trainer\n"), loading_registry())
    with pytest.raises(SpecError) as caught:
        loading.random_model(spec)
    assert caught.value.field == "hf_class" and caught.value.line == 5


def loading_registry():
    from bridge_core.registry import default_registry

    return default_registry()


def test_validate_in_a_subprocess_prints_no_traceback(tmp_path):
    path = spec_file(tmp_path, "flash", "test_config:\n  attn_implementation: flash_attention_2\n")
    done = subprocess.run(
        [sys.executable, "-m", "bridge_core", "validate", str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith(f"error: {path}:6: field 'test_config.attn_implementation'")


def test_bracketed_text_in_an_error_survives(tmp_path, capsys):
    path = spec_file(tmp_path, "dmlp", "config:\n  d_mlp: 4 * n_embd\n")
    assert main(["validate", str(path)]) == 2
    printed = one_error_line(capsys)
    assert "block 0 ([in, out])" in printed and "config.d_mlp" in printed


def test_bracketed_text_in_a_layout_error_survives(tmp_path, capsys):
    path = spec_file(tmp_path, "layout", "block:\n  attn:\n    layout: linear\n")
    assert main(["validate", str(path)]) == 2
    assert "stored [in, out]: set layout: conv1d" in one_error_line(capsys)


# ------------------------------------------------------------------------ paths that do not exist
@pytest.mark.parametrize("command", ["inspect", "hooks", "conform", "scaffold"])
def test_a_model_path_that_does_not_exist_is_one_line(tmp_path, capsys, command):
    missing = tmp_path / "no-such-checkpoint"
    assert main([command, "--model", str(missing)]) == 2
    printed = one_error_line(capsys)
    assert str(missing) in printed and "does not exist" in printed


@pytest.mark.parametrize("spec", ["gpt2", None])
def test_from_pretrained_of_a_missing_directory_raises_model_not_found(tmp_path, spec):
    with pytest.raises(ModelNotFoundError, match="no-such-dir"):
        Bridge.from_pretrained(tmp_path / "no-such-dir", spec=spec)


@pytest.mark.parametrize("text", ["./ckpt-missing", "~/ckpt-missing-xyz", "/abs/ckpt-missing", "a/b/ckpt"])
def test_local_looking_names_that_do_not_exist_are_refused(text):
    with pytest.raises(ModelNotFoundError):
        loading.require_checkpoint(text)


@pytest.mark.parametrize("text", ["gpt2", "openai-community/gpt2"])
def test_hub_ids_are_left_to_the_hub(text):
    loading.require_checkpoint(text)  # no error: a hub id is not a local path


# ------------------------------------------------------------------------ the newcomer's commands
def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"bridge-core {version('bridge-core')}"


def test_inspect_a_checkpoint_without_naming_the_architecture(checkpoint, capsys):
    assert main(["inspect", "--model", str(checkpoint), "--prompt", "the tower is in", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["architecture"] == "gpt2"
    assert report["input"]["str_tokens"] == ["<bos>", "the", "tower", "is", "in"]


def test_hooks_of_a_checkpoint_without_naming_the_architecture(checkpoint, capsys):
    assert main(["hooks", "--model", str(checkpoint), "--json", "--seq", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "gpt2"


def test_inspect_without_architecture_or_model_says_what_to_give(capsys):
    assert main(["inspect"]) == 2
    assert "--model" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["hooks", "inspect"])
def test_tiny_and_model_cannot_be_combined(checkpoint, capsys, command):
    with pytest.raises(SystemExit) as done:
        main([command, "gpt2", "--tiny", "--model", str(checkpoint)])
    assert done.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_every_option_and_subcommand_has_help():
    parser = build_parser()
    missing = []
    for action in parser._subparsers._group_actions[0]._choices_actions:
        if not action.help:
            missing.append(action.dest)
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.help is None and action.dest != "help":
                missing.append(f"{name} {action.dest}")
    assert not missing


def test_conform_matrix_labels_its_figures_and_keeps_check_names_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["conform", "gpt2", "--check", "identity_module_hooks", "--check", "bind"]) == 0
    out = capsys.readouterr().out
    assert "identity_module_hooks" in out
    assert "hook points" in out and "max abs diff" in out
