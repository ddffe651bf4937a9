"""Evaluation at the end of training: validation loss, perplexity, sample answers and exact match.

    output/samples.jsonl    one line per evaluation prompt: prompt, base answer, fine-tuned answer
    output/samples.md       the same, readable side by side
    output/evaluation.json  eval loss, perplexity, exact-match accuracy base vs fine-tuned
    output/recipe.json      the recipe, so `kubetune generate OUTPUT_DIR` knows the base and the settings

Sample answers come from `kubetune_trainer.samples` (the base answer is the same
PeftModel with its adapter disabled; prompts are formatted like training prompts).
`evaluation.exactMatch` scores the validation split: for each row (up to
`EXACT_MATCH_LIMIT`) base and fine-tuned model answer the row's prompt greedily and
their final answer (what follows `</think>` for reasoning models) is compared with
the reference's. The termination message stays short: it only names these files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_api.recipe import FineTuneJobSpec, MethodType

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase, Trainer

    from kubetune_trainer.samples import Sample

SAMPLES_MD = "samples.md"
EVALUATION_FILE = "evaluation.json"
RECIPE_FILE = "recipe.json"
EXACT_MATCH_LIMIT = 64
"""Validation rows scored by exact match: each costs two generations of up to maxNewTokens."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REFERENCE_COLUMNS = ("completion", "chosen")
"""Where the reference answer of a validation row is: SFT/distill examples, else DPO's preferred answer."""


# ---------------------------------------------------------------- exact match


def final_answer(text: str, prompt: str = "") -> str | None:
    """The answer part of a generation: what follows the last `</think>`; None if reasoning never closed.

    A reasoning block counts as open when the text has `<think>` or the prompt ends with one (R1-style
    generation prompts open it for the model).
    """
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text or prompt.rstrip().endswith(THINK_OPEN):
        return None
    return text


def normalize_answer(text: str) -> str:
    """Case, surrounding whitespace and quotes, inner runs of whitespace and a final full stop don't count."""
    text = " ".join(text.split()).casefold().strip("\"'` ")
    return re.sub(r"\.+$", "", text).strip("\"'` ")


def is_exact_match(prediction: str, reference: str, prompt: str = "") -> bool:
    """Whether the final answers of `prediction` and `reference` are equal after normalization."""
    predicted, expected = final_answer(prediction, prompt), final_answer(reference, prompt)
    if predicted is None or expected is None:
        return False
    return normalize_answer(predicted) == normalize_answer(expected)


@dataclass(frozen=True)
class ExactMatch:
    """Exact-match accuracy of the base and the fine-tuned model on `count` validation rows."""

    count: int
    base: float
    tuned: float


def _strip_special(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    # References are rendered training text: they end with eos / turn-end tokens that generations drop.
    for token in tokenizer.all_special_tokens:
        text = text.replace(token, "")
    return text


def score_exact_match(
    model: Any, tokenizer: PreTrainedTokenizerBase, rows: datasets.Dataset, spec: FineTuneJobSpec
) -> ExactMatch | None:
    """Greedy answers of base and fine-tuned model to up to EXACT_MATCH_LIMIT rows, scored; None without rows."""
    from kubetune_trainer.samples import generate_completion as generate

    reference_column = next((name for name in REFERENCE_COLUMNS if name in rows.column_names), None)
    if reference_column is None or len(rows) == 0:
        return None
    greedy = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"temperature": 0.0})})
    hits = {"base": 0, "tuned": 0}
    rows = rows.select(range(min(len(rows), EXACT_MATCH_LIMIT)))
    was_training = model.training
    model.eval()
    for row in rows:
        prompt, reference = row["prompt"], _strip_special(tokenizer, row[reference_column])
        with model.disable_adapter():
            hits["base"] += is_exact_match(generate(model, tokenizer, prompt, greedy), reference, prompt)
        hits["tuned"] += is_exact_match(generate(model, tokenizer, prompt, greedy), reference, prompt)
    model.train(was_training)
    return ExactMatch(count=len(rows), base=hits["base"] / len(rows), tuned=hits["tuned"] / len(rows))


# ---------------------------------------------------------------- loss and perplexity


def validation_metrics(trainer: Trainer, spec: FineTuneJobSpec) -> dict[str, float]:
    """evalLoss (and perplexity, for language-modelling objectives) on the validation split; all ranks call it.

    Perplexity is exp of the cross-entropy: for distillation that is the CE part of the loss, not the
    KD-weighted total; DPO's loss is no language-modelling loss, so it has none.
    """
    if trainer.eval_dataset is None or len(trainer.eval_dataset) == 0:
        return {}
    metrics = _last_evaluation(trainer) or trainer.evaluate()
    result = {"evalLoss": float(metrics["eval_loss"])}
    if spec.method.type is not MethodType.dpo:
        cross_entropy = metrics.get("eval_ce_loss", metrics["eval_loss"])
        result["perplexity"] = math.exp(min(float(cross_entropy), 700.0))  # exp overflows a float above ~709
    for key, name in (("eval_rewards/margins", "rewardMargin"), ("eval_rewards/accuracies", "rewardAccuracy")):
        if key in metrics:
            result[name] = float(metrics[key])
    return result


def _last_evaluation(trainer: Trainer) -> dict[str, float] | None:
    """The eval metrics logged at the final step, if training just evaluated (every rank has the same history).

    With loadBestModelAtEnd the exported weights may be an earlier checkpoint's, so they are evaluated afresh.
    """
    state = trainer.state
    if trainer.args.load_best_model_at_end:
        return None
    for entry in reversed(state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == state.global_step else None
    return None


# ---------------------------------------------------------------- files


def format_samples_markdown(samples: list[Sample], spec: FineTuneJobSpec) -> str:
    """samples.md: each prompt with the base and the fine-tuned answer, and the generation settings."""
    settings = spec.evaluation
    sampling = "greedy" if settings.temperature == 0 else f"temperature {settings.temperature}, top_p {settings.top_p}"
    lines = [
        "# Sample answers: base model vs fine-tuned",
        "",
        f"Base model `{spec.model.name}`, method {spec.method.type.value}; {sampling}, "
        f"at most {settings.max_new_tokens} new tokens.",
    ]
    for number, sample in enumerate(samples, 1):
        lines += ["", f"## {number}. {sample.prompt}", ""]
        for title, answer in (("Base model", sample.base), ("Fine-tuned", sample.tuned)):
            # A tilde fence: answers may well contain backticks.
            lines += [f"**{title}**", "", "~~~~text", answer, "~~~~", ""]
    return "\n".join(lines).rstrip() + "\n"


@dataclass
class EvaluationReport:
    """What the end-of-training evaluation found and wrote."""

    metrics: dict[str, float] = field(default_factory=dict)
    exact_match: ExactMatch | None = None
    files: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """evaluation.json's content."""
        document: dict[str, Any] = dict(self.metrics)
        if self.exact_match is not None:
            document["exactMatch"] = asdict(self.exact_match)
        document["files"] = {name: path.name for name, path in self.files.items()}
        return document

    def pointers(self) -> dict[str, str]:
        """What the termination message carries: where the samples and the scores are, not their content."""
        names = {"samplesPath": "samplesMarkdown", "evaluationPath": "evaluation"}
        return {key: str(self.files[name]) for key, name in names.items() if name in self.files}


def write_report(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    spec: FineTuneJobSpec,
    output: Path,
    metrics: dict[str, float],
    validation: datasets.Dataset | None,
) -> EvaluationReport:
    """Samples, exact match and evaluation.json in `output` (global rank 0 only).

    `metrics` come from `validation_metrics`; `validation` is the rendered (untokenized) validation split.
    """
    from kubetune_trainer.samples import format_samples, generate_samples, write_samples

    report = EvaluationReport(metrics=metrics)
    recipe = output / RECIPE_FILE
    recipe.write_text(json.dumps(spec.to_api(), indent=2), encoding="utf-8")
    report.files["recipe"] = recipe
    if spec.evaluation.prompts:
        samples = generate_samples(trainer.model, tokenizer, spec)
        report.files["samples"] = write_samples(samples, output)
        markdown = output / SAMPLES_MD
        markdown.write_text(format_samples_markdown(samples, spec), encoding="utf-8")
        report.files["samplesMarkdown"] = markdown
        print(format_samples(samples), flush=True)
    if spec.evaluation.exact_match and validation is not None:
        report.exact_match = score_exact_match(trainer.model, tokenizer, validation, spec)
    path = output / EVALUATION_FILE
    report.files["evaluation"] = path
    path.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    return report
