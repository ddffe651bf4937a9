"""Knowledge distillation: the loss against its formula, a tiny teacher run, and refused teachers."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from kubetune_trainer.distill import (  # noqa: E402
    LogitHead,
    check_same_vocabulary,
    distillation_loss,
    kd_ce_sums,
    scored_positions,
)
from kubetune_trainer.model import ModelError  # noqa: E402


def _reference_loss(
    student: list[list[float]], teacher: list[list[float]], targets: list[int], T: float, alpha: float
) -> float:
    """The recipe's formula in plain float64 Python, written independently of the implementation."""
    total_kl = total_ce = 0.0
    for s_row, t_row, target in zip(student, teacher, targets, strict=True):
        s_scaled = [x / T for x in s_row]
        t_scaled = [x / T for x in t_row]
        s_norm = math.log(sum(math.exp(x) for x in s_scaled))
        t_norm = math.log(sum(math.exp(x) for x in t_scaled))
        for s, t in zip(s_scaled, t_scaled, strict=True):
            p = math.exp(t - t_norm)
            total_kl += p * ((t - t_norm) - (s - s_norm))
        total_ce += math.log(sum(math.exp(x) for x in s_row)) - s_row[target]
    n = len(targets)
    return alpha * T * T * total_kl / n + (1 - alpha) * total_ce / n


@pytest.mark.parametrize(("temperature", "alpha", "chunk"), [(2.0, 0.5, 3), (1.0, 0.9, 64), (4.0, 0.0, 1)])
def test_kd_loss_equals_the_formula_in_float64(temperature: float, alpha: float, chunk: int) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(10, 17, generator=generator) * 3
    teacher = torch.randn(10, 17, generator=generator) * 3
    targets = torch.randint(0, 17, (10,), generator=generator)
    identity = LogitHead(project=lambda x: x)

    kd, ce = kd_ce_sums(
        student, teacher, targets, identity, identity, temperature=temperature, vocab_size=17, chunk_size=chunk
    )
    loss = distillation_loss(kd, ce, targets.numel(), alpha=alpha, temperature=temperature)

    expected = _reference_loss(student.tolist(), teacher.tolist(), targets.tolist(), temperature, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_chunked_gradient_equals_the_float64_gradient() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(17, 8, generator=generator, dtype=torch.float64)
    hidden = torch.randn(9, 8, generator=generator, dtype=torch.float64)
    teacher = torch.randn(9, 17, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 17, (9,), generator=generator)

    chunked_hidden = hidden.float().requires_grad_()
    head = LogitHead(project=lambda x: x @ weight.float().T)
    kd, ce = kd_ce_sums(chunked_hidden, teacher.float(), targets, head, LogitHead(project=lambda x: x),
                        temperature=2.0, vocab_size=17, chunk_size=4)
    distillation_loss(kd, ce, 9, alpha=0.5, temperature=2.0).backward()

    exact_hidden = hidden.clone().requires_grad_()
    logits = exact_hidden @ weight.T
    log_q = torch.log_softmax(logits / 2.0, -1)
    log_p = torch.log_softmax(teacher / 2.0, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    ce64 = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    ((0.5 * 4.0 * kl + 0.5 * ce64) / 9).backward()

    assert torch.allclose(chunked_hidden.grad.double(), exact_hidden.grad, rtol=1e-4, atol=1e-6)


def test_a_batch_without_completion_tokens_gives_zero_gradients() -> None:
    hidden = torch.randn(0, 8, requires_grad=True)
    head = LogitHead(project=torch.nn.Linear(8, 17))
    kd, ce = kd_ce_sums(hidden, torch.randn(0, 8), torch.zeros(0, dtype=torch.long), head, head,
                        temperature=2.0, vocab_size=17)
    distillation_loss(kd, ce, 1, alpha=0.5, temperature=2.0).backward()
    assert hidden.grad is not None and hidden.grad.numel() == 0


def test_kd_compares_only_the_shared_vocabulary() -> None:
    # A padded teacher head (one family, larger model) has extra rows that must not count.
    student = torch.randn(4, 10)
    teacher = torch.cat([student.clone(), torch.full((4, 6), 50.0)], dim=1)
    identity = LogitHead(project=lambda x: x)
    kd, _ = kd_ce_sums(student, teacher, torch.zeros(4, dtype=torch.long), identity, identity,
                       temperature=2.0, vocab_size=10)
    assert kd.item() == pytest.approx(0.0, abs=1e-5)


def test_scored_positions_predict_the_next_completion_token() -> None:
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 6, 9, 4]])
    mask, targets = scored_positions(labels)
    assert mask.tolist() == [[False, True, True, False, False], [True, True, True, True, False]]
    assert targets.tolist() == [7, 8, 5, 6, 9, 4]


def test_teacher_with_another_tokenizer_is_refused(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from tests.fixtures.models import save_tiny_model
    from tests.fixtures.tokenizers import build_tokenizer

    path = save_tiny_model(tmp_path / "student")
    model = AutoModelForCausalLM.from_pretrained(path)
    student_tokenizer = build_tokenizer()
    teacher_tokenizer = build_tokenizer()
    teacher_tokenizer.add_tokens(["<extra>"])

    expected = r"teacher\.name other/teacher: its tokenizer differs .*\(1003 vs 1002 tokens; e.g. token .<extra>."
    with pytest.raises(ModelError, match=expected):
        check_same_vocabulary(student_tokenizer, teacher_tokenizer, model, model, "other/teacher")
    assert check_same_vocabulary(student_tokenizer, build_tokenizer(), model, model, "same") == len(student_tokenizer)


# ---------------------------------------------------------------- whole runs

from tests.trainer.method_runs import (  # noqa: E402
    log_history,
    method_rows,
    metrics_port,
    run_in_process,
    scrape,
    uninterrupted_and_resumed,
    write_job,
)
from tests.trainer.sft_runs import assert_identical  # noqa: E402


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted 20-step distillation run in this process, for the tests of its losses and metrics."""
    root = tmp_path_factory.mktemp("distill")
    recipe = write_job(root, "distill")
    outcome = run_in_process(recipe, root / "ws")
    return {"root": root, "recipe": recipe, "outcome": outcome,
            "metrics": scrape(metrics_port(recipe))}


def _mean_kl_to_teacher(student, teacher, tokenizer, temperature: float = 2.0) -> float:
    """KL(teacher_T ‖ student_T) per completion token of the toy rows, from full float64 logits, no chunking."""
    rows = method_rows("distill")
    tokenizer.padding_side = "right"
    batch = tokenizer([f"{row['prompt']}\n{row['completion']}" for row in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        log_q = torch.log_softmax(student(**batch).logits.double() / temperature, -1)
        log_p = torch.log_softmax(teacher(**batch).logits.double() / temperature, -1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    total, tokens = 0.0, 0
    for index, row in enumerate(rows):
        start = len(tokenizer(row["prompt"] + "\n")["input_ids"]) - 1
        end = int(batch["attention_mask"][index].sum()) - 1
        # Positions start … end - 1 predict the completion's tokens.
        total, tokens = total + per_token[index, start:end].sum().item(), tokens + end - start
    return total / tokens


def test_distill_run_lowers_kl_to_the_teacher(distill_run: dict) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert distill_run["outcome"].status == "succeeded", distill_run["outcome"].message
    root = distill_run["root"]
    tokenizer = AutoTokenizer.from_pretrained(root / "student")
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher").eval()
    base = AutoModelForCausalLM.from_pretrained(root / "student").eval()
    before = _mean_kl_to_teacher(base, teacher, tokenizer)
    tuned = PeftModel.from_pretrained(base, str(root / "ws" / "output" / "adapter")).eval()
    after = _mean_kl_to_teacher(tuned, teacher, tokenizer)
    assert after < 0.9 * before, (before, after)


def test_distill_logs_and_serves_both_loss_parts(distill_run: dict) -> None:
    logs = [entry for entry in log_history(distill_run["root"] / "ws") if "kd_loss" in entry]
    first, last = logs[0], logs[-1]
    assert last["kd_loss"] < first["kd_loss"]
    # The logged loss is alpha·T²·KD + (1 - alpha)·CE of the same tokens (alpha 0.9, T 2).
    assert first["loss"] == pytest.approx(0.9 * 4 * first["kd_loss"] + 0.1 * first["ce_loss"], rel=1e-4)
    metrics = distill_run["metrics"]
    assert metrics["kubetune_trainer_kd_loss"] == pytest.approx(last["kd_loss"])
    assert metrics["kubetune_trainer_ce_loss"] == pytest.approx(last["ce_loss"])


def test_distill_perplexity_is_that_of_the_cross_entropy_part(distill_run: dict) -> None:
    import json

    final_eval = [entry for entry in log_history(distill_run["root"] / "ws") if "eval_ce_loss" in entry][-1]
    report = json.loads((distill_run["root"] / "ws" / "output" / "evaluation.json").read_text())
    assert report["evalLoss"] == pytest.approx(final_eval["eval_loss"])
    assert report["perplexity"] == pytest.approx(math.exp(final_eval["eval_ce_loss"]))


def test_teacher_loads_frozen_in_4_bits(tmp_path) -> None:
    from bitsandbytes.nn import Linear4bit
    from kubetune_trainer.distill import load_teacher
    from kubetune_trainer.model import ModelLoader
    from kubetune_api.recipe import parse_spec

    from tests.fixtures.models import save_tiny_model

    teacher_path = save_tiny_model(tmp_path / "teacher", seed=1)
    spec = parse_spec({
        "model": {"name": str(tmp_path / "student")}, "dataset": {"path": "x.jsonl"},
        "method": {"type": "distill", "distill": {"teacher": {"name": str(teacher_path), "quantizationBits": 4}}},
    })
    teacher, tokenizer = load_teacher(spec, ModelLoader(cache_dir=None, dtype=torch.float32))
    assert isinstance(teacher.model.layers[0].self_attn.q_proj, Linear4bit)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert len(tokenizer) == 1002


def test_mismatched_vocabularies_are_refused_at_start(tmp_path) -> None:
    from tests.fixtures.tokenizers import build_tokenizer

    recipe = write_job(tmp_path, "distill")
    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    other.save_pretrained(tmp_path / "teacher")

    outcome = run_in_process(recipe, tmp_path / "ws")

    assert (outcome.status, int(outcome.exit_code)) == ("invalid", 2)
    assert "method.distill.teacher.name" in outcome.message and "tokenizer differs" in outcome.message
    assert "\n" not in outcome.message
    assert not (tmp_path / "ws" / "output" / "checkpoints").exists() or not any(
        (tmp_path / "ws" / "output" / "checkpoints").iterdir()
    )


@pytest.mark.slow
def test_distill_resumes_after_sigkill_to_the_same_weights(tmp_path) -> None:
    # The reference is a launcher run too (not distill_run, trained in this process with other threads).
    message, reference, resumed = uninterrupted_and_resumed(tmp_path, "distill", step=10)

    assert message["step"] == 20
    assert_identical(resumed, reference)


def test_kubetune_run_resolves_a_relative_teacher_path(tmp_path) -> None:
    from kubetune_trainer.local import resolve_paths
    from kubetune_api.recipe import parse_spec

    (tmp_path / "models" / "teacher").mkdir(parents=True)
    spec = parse_spec({
        "model": {"name": "org/student"}, "dataset": {"path": "data.jsonl"},
        "method": {"type": "distill", "distill": {"teacher": {"name": "models/teacher"}}},
    })
    resolved = resolve_paths(spec, tmp_path)
    assert resolved.method.distill.teacher.name == str((tmp_path / "models" / "teacher").resolve())
    assert resolved.model.name == "org/student"  # a hub id stays one
