"""The CLI speaks English and Korean; JSON stays language-neutral."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.locale import MESSAGES


def test_every_key_in_both_languages():
    assert set(MESSAGES["en"]) == set(MESSAGES["ko"])
    assert all(MESSAGES["ko"][k].strip() for k in MESSAGES["ko"])


def test_korean_table(capsys):
    assert main(["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--r", "8", "--target", "q_proj,v_proj", "--lang", "ko"]) == 0
    out = capsys.readouterr().out
    assert "학습 파라미터" in out and "4,194,304" in out and "최대 할당 메모리" in out


def test_json_is_language_neutral(capsys):
    args = ["estimate", "--model", "meta-llama/Llama-2-7b-hf", "--r", "8", "--target", "q_proj,v_proj", "--json"]
    main(args)
    en = json.loads(capsys.readouterr().out)
    main(args + ["--lang", "ko"])
    assert json.loads(capsys.readouterr().out) == en


def test_unknown_language_is_refused():
    with pytest.raises(SystemExit):
        main(["estimate", "--lang", "fr"])
