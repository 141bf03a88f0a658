"""`bridge-core scaffold --model-type T` writes YAML that, unedited, validates and passes `conform`; guesses
are `# NOTE:` lines and missing vocabulary is named in the file."""

from __future__ import annotations

from bridge_core.cli import main


def test_scaffold_yaml_validates_and_conforms_unedited(tmp_path, capsys):
    path = tmp_path / "qwen3.yaml"
    assert main(["scaffold", "--model-type", "qwen3", "-o", str(path)]) == 0
    text = path.read_text()
    assert "# NOTE: block.attn.softmax_dtype" in text and "q_norm" in text
    assert main(["validate", str(path)]) == 0
    assert main(["conform", str(path), "-q"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_scaffold_names_missing_vocabulary(tmp_path, capsys):
    assert main(["scaffold", "--model-type", "diffllama"]) == 0
    out = capsys.readouterr().out
    assert "# NOTE: MISSING VOCABULARY (output projection)" in out


def test_a_multi_line_note_stays_a_comment():
    from bridge_core.drafting.draft import Draft
    from bridge_core.drafting.emit import to_yaml

    draft = Draft(fields={"name": "x"})
    draft.notes.append("HF refused it:\nValueError: q_lora_rank must be set\n  (second line)")
    text = to_yaml(draft)
    import yaml

    assert yaml.safe_load(text) == {"name": "x"}
    assert "#   ValueError: q_lora_rank must be set" in text
