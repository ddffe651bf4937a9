"""kubetune_trainer.data: every format's rows, the labels TRL really trains on, and bad data.

Datasets are written by the tests; the tokenizer is the local BPE of tests.fixtures.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from kubetune_trainer.data import DataError, InputNotFound, TrainingData, load_training_data
from kubetune_trainer.formats import render_inference_prompt
from kubetune_api.recipe import DatasetSpec

from tests.fixtures.tokenizers import R1_LIKE_CHAT_TEMPLATE, build_tokenizer

QUIZ = [
    {
        "category": f"Topic {i}",
        "difficulty": ["easy", "medium", "hard"][i % 3],
        "question": f"Question number {i}?",
        "correct_answer": f"Answer {i}",
        "incorrect_answers": [f"Wrong {i}a", f"Wrong {i}b"],
    }
    for i in range(7)
]
QA = [
    {"Question": "What is 2+2?", "Complex_CoT": "Two plus two makes four.", "Response": "4"},
    {"Question": "Capital of France?", "Complex_CoT": "France's capital is Paris.", "Response": "Paris"},
]


# ---------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def make_spec(**fields: Any) -> DatasetSpec:
    """A DatasetSpec from camelCase fields; no validation split unless asked."""
    return DatasetSpec.model_validate({"path": "data.jsonl", "validationSplit": 0, **fields})


def load(tmp_path: Path, spec: DatasetSpec, tokenizer: Any = None) -> TrainingData:
    return load_training_data(
        spec, tokenizer or build_tokenizer(), base_dir=tmp_path, cache_dir=str(tmp_path / "cache")
    )


def rows_of(data: TrainingData) -> list[dict[str, str]]:
    return data.train.to_list()


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------- rows of each format


def test_chat_messages_become_templated_prompt_and_answer_with_turn_end(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    write_jsonl(tmp_path / "data.jsonl", [{"messages": messages}])
    tok = build_tokenizer()
    [row] = rows_of(load(tmp_path, make_spec(format="chat", systemPrompt="Be brief."), tok))
    system = {"role": "system", "content": "Be brief."}
    assert row == {
        "prompt": chat_prompt(tok, [system, messages[0]]),
        "completion": "Paris<|im_end|><|eos|>",
    }


def test_chat_keeps_a_conversations_own_system_message_and_takes_sharegpt(tmp_path: Path) -> None:
    conversation = [
        {"from": "system", "value": "Own system."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello"},
    ]
    write_jsonl(tmp_path / "data.jsonl", [{"conversations": conversation}])
    tok = build_tokenizer()
    [row] = rows_of(load(tmp_path, make_spec(format="chat", systemPrompt="Ignored."), tok))
    expected = chat_prompt(tok, [{"role": "system", "content": "Own system."}, {"role": "user", "content": "Hi"}])
    assert row["prompt"] == expected
    assert row["completion"] == "Hello<|im_end|><|eos|>"


def test_chat_multi_turn_trains_the_last_answer_with_earlier_turns_as_prompt(tmp_path: Path) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ]
    write_jsonl(tmp_path / "data.jsonl", [{"dialog": messages}])
    tok = build_tokenizer()
    [row] = rows_of(load(tmp_path, make_spec(columns={"messages": "dialog"}), tok))
    assert row["prompt"] == chat_prompt(tok, messages[:3])
    assert row["completion"] == "Goodbye<|im_end|><|eos|>"


def test_chat_reasoning_kept_in_the_assistant_message_is_wrapped(tmp_path: Path) -> None:
    answer = {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}
    write_jsonl(tmp_path / "data.jsonl", [{"messages": [{"role": "user", "content": "2+2?"}, answer]}])
    [row] = rows_of(load(tmp_path, make_spec()))
    assert row["completion"] == "<think>\nTwo and two.\n</think>\n\n4<|im_end|><|eos|>"
    [row] = rows_of(load(tmp_path, make_spec(thinkTags=False)))
    assert row["completion"] == "Two and two.\n\n4<|im_end|><|eos|>"


def test_chat_question_columns_with_reasoning_wrap_think_before_answer(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QA)
    tok = build_tokenizer()
    columns = {"prompt": "Question", "reasoning": "Complex_CoT", "completion": "Response"}
    first = rows_of(load(tmp_path, make_spec(format="chat", columns=columns), tok))[0]
    assert first["prompt"] == chat_prompt(tok, [{"role": "user", "content": "What is 2+2?"}])
    assert first["completion"] == "<think>\nTwo plus two makes four.\n</think>\n\n4<|im_end|><|eos|>"


def test_chat_reasoning_survives_an_r1_like_template_that_strips_it_from_whole_conversations(
    tmp_path: Path,
) -> None:
    write_jsonl(tmp_path / "data.jsonl", QA)
    r1 = build_tokenizer(R1_LIKE_CHAT_TEMPLATE)
    columns = {"prompt": "Question", "reasoning": "Complex_CoT", "completion": "Response"}
    first = rows_of(load(tmp_path, make_spec(columns=columns, systemPrompt="Doctor."), r1))[0]
    whole = r1.apply_chat_template(
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "<think>\nTwo plus two makes four.\n</think>\n\n4"},
        ],
        tokenize=False,
    )
    assert "Two plus two" not in whole  # what the template does to a whole conversation
    # The R1 generation prompt opens <think>: the completion continues it instead of opening another.
    assert first["prompt"] == "<|bos|>Doctor.<|User|>What is 2+2?<|Assistant|><think>\n"
    assert first["completion"] == "Two plus two makes four.\n</think>\n\n4<|eos|>"


def test_chat_without_reasoning_closes_an_opened_think_block(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    [row] = rows_of(load(tmp_path, make_spec(), build_tokenizer(R1_LIKE_CHAT_TEMPLATE)))
    assert row["completion"] == "\n</think>\n\nHello<|eos|>"


def test_a_template_written_bos_is_not_doubled_by_a_tokenizer_that_adds_bos(tmp_path: Path) -> None:
    from tokenizers import processors

    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    tok = build_tokenizer(R1_LIKE_CHAT_TEMPLATE)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.bos_token_id)]
    )
    [row] = rows_of(load(tmp_path, make_spec(), tok))
    assert row["prompt"] == "<|User|>Hi<|Assistant|><think>\n"
    ids = tok(row["prompt"])["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_an_unmapped_system_column_is_not_a_system_prompt(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Hi", "completion": "Hello", "system": "Not used."}])
    [row] = rows_of(load(tmp_path, make_spec(format="prompt-completion")))
    assert row["prompt"] == "Hi\n"


def test_think_tags_off_puts_reasoning_before_the_answer_as_plain_text(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QA)
    columns = {"prompt": "Question", "reasoning": "Complex_CoT", "completion": "Response"}
    spec = make_spec(format="prompt-completion", columns=columns, thinkTags=False)
    first = rows_of(load(tmp_path, spec))[0]
    assert first == {"prompt": "What is 2+2?\n", "completion": "Two plus two makes four.\n\n4<|eos|>"}


def test_prompt_completion_is_raw_text_with_system_prompt_and_a_newline_before_the_answer(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"prompt": "Say hi", "completion": "hi"},
            {"prompt": "Answer:", "completion": " 42", "sys": "Row system."},
        ],
    )
    spec = make_spec(format="prompt-completion", systemPrompt="You are kind.", columns={"system": "sys"})
    assert rows_of(load(tmp_path, spec)) == [
        {"prompt": "You are kind.\n\nSay hi\n", "completion": "hi<|eos|>"},
        {"prompt": "Row system.\n\nAnswer:", "completion": " 42<|eos|>"},
    ]


def test_text_rows_get_eos(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"body": "Once upon a time."}, {"body": "The end.<|eos|>"}])
    spec = make_spec(format="text", columns={"text": "body"})
    assert rows_of(load(tmp_path, spec)) == [{"text": "Once upon a time.<|eos|>"}, {"text": "The end.<|eos|>"}]


QUIZ_TEMPLATE = {
    "prompt": "Generate a quiz question about {{ category }} with {{ difficulty }} difficulty.",
    "completion": 'Question: {{ question }}\nCorrect answer: {{ correct_answer }}\nWrong answers: '
    '{{ incorrect_answers | join(", ") }}',
}
QUIZ_MULTI_TEMPLATE = {
    "groupSize": 3,
    "prompt": "Generate a {{ rows | length }}-question quiz about: "
    "{% for row in rows %}{{ row.category }}{% if not loop.last %}, {% endif %}{% endfor %}.",
    "completion": "{% for row in rows %}{{ loop.index }}. {{ row.question }} Answer: {{ row.correct_answer }}\n"
    "{% endfor %}",
}


def test_template_renders_one_quiz_question_per_row_joining_list_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ)
    rows = rows_of(load(tmp_path, make_spec(format="template", template=QUIZ_TEMPLATE)))
    assert len(rows) == 7
    assert rows[1] == {
        "prompt": "Generate a quiz question about Topic 1 with medium difficulty.\n",
        "completion": "Question: Question number 1?\nCorrect answer: Answer 1\n"
        "Wrong answers: Wrong 1a, Wrong 1b<|eos|>",
    }


def test_template_group_size_makes_one_quiz_from_consecutive_rows_and_drops_the_rest(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ)
    rows = rows_of(load(tmp_path, make_spec(format="template", template=QUIZ_MULTI_TEMPLATE)))
    assert len(rows) == 2  # 7 rows: two groups of 3, the 7th left out
    assert rows[1] == {
        "prompt": "Generate a 3-question quiz about: Topic 3, Topic 4, Topic 5.\n",
        "completion": "1. Question number 3? Answer: Answer 3\n2. Question number 4? Answer: Answer 4\n"
        "3. Question number 5? Answer: Answer 5\n<|eos|>",
    }


def test_preference_text_pairs(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}])
    spec = make_spec(format="preference", columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert rows_of(load(tmp_path, spec)) == [{"prompt": "2+2?\n", "chosen": "4<|eos|>", "rejected": "5<|eos|>"}]


def test_preference_chat_pairs_with_explicit_or_shared_prompt(tmp_path: Path) -> None:
    user = {"role": "user", "content": "2+2?"}
    answer = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"prompt": [user], "chosen": [answer("4")], "rejected": [answer("5")]},
            {"prompt": None, "chosen": [user, answer("4")], "rejected": [user, answer("5")]},
        ],
    )
    tok = build_tokenizer()
    rows = rows_of(load(tmp_path, make_spec(format="preference", systemPrompt="Math."), tok))
    expected = {
        "prompt": chat_prompt(tok, [{"role": "system", "content": "Math."}, user]),
        "chosen": "4<|im_end|><|eos|>",
        "rejected": "5<|im_end|><|eos|>",
    }
    assert rows == [expected, expected]


def test_inference_prompt_matches_the_training_prompt(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    tok = build_tokenizer()
    for fmt in ("chat", "prompt-completion"):
        spec = make_spec(format=fmt, systemPrompt="Sys.")
        [row] = rows_of(load(tmp_path, spec, tok))
        assert render_inference_prompt(spec, tok, "Hi") == row["prompt"]


# ---------------------------------------------------------------- sources, maxSamples, split


def test_csv_parquet_json_and_a_folder_of_jsonl_load_alike(tmp_path: Path) -> None:
    import datasets

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]
    (tmp_path / "d.csv").write_text("prompt,completion\n" + "".join(f"p{i},c{i}\n" for i in range(4)))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "folder" / "a.jsonl", rows[:2])
    write_jsonl(tmp_path / "folder" / "b.jsonl", rows[2:])
    results = [
        rows_of(load(tmp_path, make_spec(path=path, format="prompt-completion")))
        for path in ("d.csv", "d.parquet", "d.json", "folder")
    ]
    assert results[0] == [{"prompt": f"p{i}\n", "completion": f"c{i}<|eos|>"} for i in range(4)]
    assert results[1:] == [results[0]] * 3


def test_hub_id_code_path_loads_a_dataset_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "hubds" / "train.jsonl", [{"prompt": "p", "completion": "c"}])
    spec = DatasetSpec.model_validate(
        {"name": str(tmp_path / "hubds"), "format": "prompt-completion", "validationSplit": 0}
    )
    assert rows_of(load(tmp_path, spec)) == [{"prompt": "p\n", "completion": "c<|eos|>"}]


def test_max_samples_keeps_the_first_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"row {i}"} for i in range(20)])
    rows = rows_of(load(tmp_path, make_spec(format="text", maxSamples=4)))
    assert [r["text"] for r in rows] == [f"row {i}<|eos|>" for i in range(4)]


def test_validation_split_is_seeded_reproducible_and_disjoint(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"text": f"row {i}"} for i in range(20)])

    def split(seed: int) -> tuple[list[str], list[str]]:
        data = load(tmp_path, make_spec(format="text", validationSplit=0.25, seed=seed))
        assert data.validation is not None
        return list(data.train["text"]), list(data.validation["text"])

    train, validation = split(1)
    assert len(validation) == 5 and len(train) == 15
    assert sorted(train + validation) == sorted(f"row {i}<|eos|>" for i in range(20))
    assert split(1) == (train, validation)
    assert split(2)[1] != validation


# ---------------------------------------------------------------- bad data: one line, naming where


def bad(tmp_path: Path, spec: DatasetSpec, tokenizer: Any = None) -> str:
    with pytest.raises(DataError) as caught:
        load(tmp_path, spec, tokenizer)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_column_names_file_column_and_existing_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "p", "answer": "a"}])
    message = bad(tmp_path, make_spec(format="prompt-completion"))
    assert "data.jsonl" in message and "'completion'" in message and "dataset.columns.completion" in message
    assert "the columns are: prompt, answer" in message


def test_mapped_reasoning_column_that_does_not_exist(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QA)
    columns = {"prompt": "Question", "reasoning": "CoT", "completion": "Response"}
    message = bad(tmp_path, make_spec(columns=columns))
    assert "'CoT'" in message and "Complex_CoT" in message


def test_null_cell_names_the_jsonl_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": null}\n')
    message = bad(tmp_path, make_spec(format="prompt-completion"))
    assert f"{path} line 3" in message and "'completion'" in message


def test_unknown_template_variable_is_named_with_the_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ)
    template = {**QUIZ_TEMPLATE, "prompt": "About {{ categroy }}"}
    message = bad(tmp_path, make_spec(format="template", template=template))
    assert "dataset.template.prompt" in message and "'categroy'" in message and "category" in message


def test_template_variable_null_in_one_row_names_the_row(tmp_path: Path) -> None:
    rows = [dict(row) for row in QUIZ[:3]]
    rows[2]["difficulty"] = None
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    message = bad(tmp_path, make_spec(format="template", template=QUIZ_TEMPLATE))
    assert f"{path} line 3" in message and "'difficulty'" in message


def test_grouped_template_must_use_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ)
    template = {**QUIZ_MULTI_TEMPLATE, "prompt": "Quiz about {{ category }}"}
    message = bad(tmp_path, make_spec(format="template", template=template))
    assert "'category'" in message and "rows" in message


def test_template_syntax_error_names_the_template(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ)
    message = bad(tmp_path, make_spec(format="template", template={**QUIZ_TEMPLATE, "completion": "{{ x "}))
    assert "dataset.template.completion line 1" in message


def test_a_bad_row_in_a_group_names_where_the_group_starts(tmp_path: Path) -> None:
    rows = [dict(row) for row in QUIZ[:6]]
    rows[4]["question"] = None
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    message = bad(tmp_path, make_spec(format="template", template=QUIZ_MULTI_TEMPLATE))
    assert f"{path} line 4 (the group of 3 rows from there)" in message and "question" in message


def test_too_few_rows_for_a_group(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", QUIZ[:2])
    assert "groupSize 3" in bad(tmp_path, make_spec(format="template", template=QUIZ_MULTI_TEMPLATE))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", ["has no rows"]),
        (b"\n\n", ["has no rows"]),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ["line 2", "0xe9", "not UTF-8"]),
        (b'{"text": "ok"}\n{"text": "ok"}\n{"text": "trunc', ["line 3", "invalid JSON", "truncated"]),
        (b'{"text": "ok"}\n["a list"]\n', ["line 2", "expected a JSON object"]),
    ],
    ids=["empty", "blank-lines", "undecodable", "truncated", "not-an-object"],
)
def test_broken_jsonl_names_file_and_line(tmp_path: Path, content: bytes, words: list[str]) -> None:
    (tmp_path / "data.jsonl").write_bytes(content)
    message = bad(tmp_path, make_spec(format="text"))
    assert str(tmp_path / "data.jsonl") in message
    for word in words:
        assert word in message


def test_broken_line_in_the_second_file_of_a_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "folder" / "a.jsonl", [{"text": "x"}] * 3)
    (tmp_path / "folder" / "b.jsonl").write_text('{"text": "y"}\n{"text": \n')
    message = bad(tmp_path, make_spec(path="folder", format="text"))
    assert f"{tmp_path / 'folder' / 'b.jsonl'} line 2" in message


def test_null_in_the_second_file_of_a_folder_names_that_file_and_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "folder" / "a.jsonl", [{"text": "x"}] * 3)
    write_jsonl(tmp_path / "folder" / "b.jsonl", [{"text": "y"}, {"text": None}])
    message = bad(tmp_path, make_spec(path="folder", format="text"))
    assert f"{tmp_path / 'folder' / 'b.jsonl'} line 2" in message and "'text'" in message


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("data.csv", b"text\nok\ncaf\xe9\n", ["data.csv line 3", "not UTF-8"]),
        ("data.csv", b"text\n", ["data.csv", "no rows"]),
        ("data.csv", b"a,b\n1,2\n3,4,5\n", ["data.csv", "cannot read it as csv", "line 3"]),
        ("data.json", b'[{"text": "a"},\n {"text": ', ["data.json line 2", "invalid JSON"]),
        ("data.json", b'{"text": "a"}', ["expected a JSON list of objects"]),
        ("data.txt", b"hello", ["unsupported file type '.txt'", "jsonl"]),
        ("data.parquet", b"not parquet", ["data.parquet", "cannot read it as parquet"]),
    ],
    ids=["csv-undecodable", "csv-header-only", "csv-ragged", "json-truncated", "json-object", "txt", "parquet-junk"],
)
def test_broken_files_of_other_types(tmp_path: Path, name: str, content: bytes, words: list[str]) -> None:
    (tmp_path / name).write_bytes(content)
    message = bad(tmp_path, make_spec(path=name, format="text"))
    for word in words:
        assert word in message


def test_a_missing_path_is_input_not_found_which_the_operator_waits_for(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound) as caught:
        load(tmp_path, make_spec(path="missing.jsonl"))
    assert (caught.value.reason, caught.value.exit_code) == ("InputNotFound", 2)
    assert f"dataset.path {tmp_path / 'missing.jsonl'}: no such file or folder" in str(caught.value)
    assert pickle.loads(pickle.dumps(caught.value)).reason == "InputNotFound"  # crosses process pools intact


def test_unreadable_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "holds no .jsonl, .json, .csv, .parquet files" in bad(tmp_path, make_spec(path="empty"))
    write_jsonl(tmp_path / "mixed" / "a.jsonl", [{"text": "x"}])
    (tmp_path / "mixed" / "b.csv").write_text("text\ny\n")
    assert "mixes file types (.csv, .jsonl)" in bad(tmp_path, make_spec(path="mixed"))
    missing_hub = DatasetSpec.model_validate({"name": str(tmp_path / "nohub")})
    assert "no such dataset" in bad(tmp_path, missing_hub)


def test_chat_row_problems_name_the_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         {"messages": [{"role": "user", "content": "a"}]}],
    )
    message = bad(tmp_path, make_spec())
    assert f"{path} line 2" in message and "last message must be the assistant's answer" in message


def test_chat_needs_a_chat_template(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a", "completion": "b"}])
    tok = build_tokenizer()
    tok.chat_template = None
    assert "chat template" in bad(tmp_path, make_spec(format="chat"), tok)


def test_chat_without_messages_or_prompt_columns_lists_columns(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"question": "a", "answer": "b"}])
    message = bad(tmp_path, make_spec())
    assert "needs a messages column" in message and "question, answer" in message


def test_too_few_examples_for_the_validation_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"text": "only one"}])
    assert "too few" in bad(tmp_path, make_spec(format="text", validationSplit=0.1))


# ---------------------------------------------------------------- what TRL's SFTTrainer trains on


def tiny_model(tokenizer: Any) -> Any:
    """A one-layer random Llama over `tokenizer`'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def sft_batch(tmp_path: Path, data: TrainingData, tokenizer: Any) -> dict[str, Any]:
    """The train set as TRL's SFTTrainer prepares and collates it, completion-only loss on."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        completion_only_loss=True,
        bf16=False,
        use_cpu=True,
        max_length=512,
    )
    trainer = SFTTrainer(model=tiny_model(tokenizer), args=args, train_dataset=data.train, processing_class=tokenizer)
    return trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])


def labelled_examples(tmp_path: Path, data: TrainingData, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of each collated example, padding cut off."""
    batch = sft_batch(tmp_path, data, tokenizer)
    examples = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        keep = mask.bool()
        examples.append((ids[keep].tolist(), labels[keep].tolist()))
    return examples


CAPITAL_CHAT = [
    {
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris"},
        ]
    }
]
QA_COLUMNS = {"columns": {"prompt": "Question", "reasoning": "Complex_CoT", "completion": "Response"}}
MASK_CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]], str | None]] = {
    "chat": ({"format": "chat"}, CAPITAL_CHAT, None),
    "chat-reasoning-r1": (QA_COLUMNS, QA, R1_LIKE_CHAT_TEMPLATE),
    "chat-reasoning-chatml": (QA_COLUMNS, QA, None),
    "prompt-completion": (
        {"format": "prompt-completion", "systemPrompt": "Be kind."},
        [{"prompt": "Say hi", "completion": "hi there"}],
        None,
    ),
    "template": ({"format": "template", "template": QUIZ_TEMPLATE}, QUIZ[:2], None),
    "template-group": ({"format": "template", "template": QUIZ_MULTI_TEMPLATE}, QUIZ[:6], None),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_sft_trainer_labels_are_masked_exactly_over_the_prompt(tmp_path: Path, case: str) -> None:
    fields, rows, chat_template = MASK_CASES[case]
    write_jsonl(tmp_path / "data.jsonl", rows)
    tok = build_tokenizer(chat_template) if chat_template else build_tokenizer()
    data = load(tmp_path, make_spec(**fields), tok)
    expected_rows = rows_of(data)
    examples = labelled_examples(tmp_path, data, tok)
    assert len(examples) == len(expected_rows) > 0
    for index, ((ids, labels), row) in enumerate(zip(examples, expected_rows, strict=True)):
        prompt_ids = tok(row["prompt"])["input_ids"]
        n = len(prompt_ids)
        assert ids == tok(row["prompt"] + row["completion"])["input_ids"]
        assert ids[:n] == prompt_ids  # the boundary falls between tokens
        assert labels[:n] == [-100] * n
        assert labels[n:] == ids[n:]
        assert tok.decode(labels[n:]) == row["completion"]
        assert labels[-1] == tok.eos_token_id
        if "reasoning" in case:  # the reasoning is part of what the model learns, then the answer
            reasoning, answer = rows[index]["Complex_CoT"], rows[index]["Response"]
            assert f"{reasoning}\n</think>\n\n{answer}" in tok.decode(labels[n:])


def test_sft_trainer_trains_on_every_token_of_text_rows(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data.jsonl", [{"text": "Once upon a time."}, {"text": "The end."}])
    tok = build_tokenizer()
    data = load(tmp_path, make_spec(format="text"), tok)
    for (ids, labels), row in zip(labelled_examples(tmp_path, data, tok), rows_of(data), strict=True):
        assert ids == labels == tok(row["text"])["input_ids"]
        assert ids[-1] == tok.eos_token_id


def test_dpo_trainer_splits_preference_rows_at_the_prompt(tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer

    user = {"role": "user", "content": "2+2?"}
    write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"chosen": [user, {"role": "assistant", "content": "4"}],
             "rejected": [user, {"role": "assistant", "content": "five"}]},
        ],
    )
    tok = build_tokenizer()
    data = load(tmp_path, make_spec(format="preference"), tok)
    [row] = rows_of(data)
    args = DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", bf16=False, use_cpu=True)
    trainer = DPOTrainer(
        model=tiny_model(tok), ref_model=tiny_model(tok), args=args, train_dataset=data.train, processing_class=tok
    )
    example = trainer.train_dataset[0]
    assert example["prompt_ids"] == tok(row["prompt"])["input_ids"]
    assert tok.decode(example["chosen_ids"]) == row["chosen"] == "4<|im_end|><|eos|>"
    assert tok.decode(example["rejected_ids"]) == row["rejected"] == "five<|im_end|><|eos|>"
