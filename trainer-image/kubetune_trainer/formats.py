"""How dataset rows become training text: one renderer per `dataset.format`.

A renderer turns a group of rows (one row, or `template.groupSize` rows) into one
example of TRL's "standard" (plain string) types:

- chat, prompt-completion, template → `{"prompt": str, "completion": str}`
- text → `{"text": str}`
- preference → `{"prompt": str, "chosen": str, "rejected": str}`

Chat prompts go through the tokenizer's chat template with the generation prompt;
the completion is appended as text, never pushed through the template: templates
such as DeepSeek-R1-Distill's drop everything up to `</think>` in assistant turns, so
a whole conversation rendered by them loses the reasoning being taught. Prompts of
the other formats are raw text, the system prompt before them.

Reasoning (a mapped reasoning column, or `reasoning_content` in a chat answer) goes
before the answer as `<think>\n…\n</think>\n\n` with thinkTags, else as plain text;
when the generation prompt already opens `<think>` (R1-Distill) the block continues it.

Completions end the way the chat template ends an assistant turn (e.g.
`<|im_end|>`) followed by the tokenizer's eos token, so the model learns to stop.

Only the last assistant turn of a conversation is a completion; earlier turns are
context (rendered by the template as at inference time).

Prompts of the raw formats (template, prompt-completion, text preference pairs) are
not what the base's chat template renders, so `training_chat_template` writes a chat
template that renders exactly them; the adapter ships it, and inference (the samples,
`kubetune generate`) renders through it, so a served adapter is prompted as it was taught.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune_api.recipe import DatasetFormat, DatasetSpec

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# ShareGPT-style messages ({"from": "human", "value": ...}) use these role names.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# Reasoning that some datasets keep inside the assistant message instead of a column.
MESSAGE_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_SENTINEL = "KUBETUNE-ANSWER-SENTINEL"
ROLES_WITHOUT_DEFAULT = frozenset({"reasoning", "system"})

Row = Mapping[str, Any]
Renderer = Callable[[Sequence[Row]], dict[str, str]]


class FormatError(ValueError):
    """The columns or a row do not fit the format; the caller adds which file and row."""


@dataclass(frozen=True)
class _Context:
    """What every renderer needs: the spec, the tokenizer and the columns that exist."""

    spec: DatasetSpec
    tokenizer: Any
    columns: tuple[str, ...]

    def require(self, role: str) -> str:
        """The column of `role`, which must exist."""
        name = self.spec.columns.column(role)
        if name not in self.columns:
            raise FormatError(f"no column {name!r} (dataset.columns.{role}){self.listing()}")
        return name

    def optional(self, role: str) -> str | None:
        """The mapped column of `role` (which must then exist); unmapped, the role's own column if it has a
        default one and it exists (reasoning and system have none: they are used only when mapped)."""
        if getattr(self.spec.columns, role) is not None:
            return self.require(role)
        return role if role not in ROLES_WITHOUT_DEFAULT and role in self.columns else None

    def listing(self) -> str:
        """`; the columns are: a, b` for error messages."""
        return f"; the columns are: {', '.join(self.columns) or '(none)'}"

    @functools.cached_property
    def duplicate_bos(self) -> str:
        """The bos a template writes that tokenizing would add again, so must be dropped ("" if none)."""
        bos = self.tokenizer.bos_token or ""
        return bos if bos and _adds_bos(self.tokenizer) else ""

    def chat_prompt(self, messages: list[dict[str, str]], template: str | None = None) -> str:
        """The conversation so far through the chat template (the tokenizer's, or `template`), ending with the
        generation prompt; without the bos that tokenizing adds again."""
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, chat_template=template
            )
        except Exception as err:  # templates raise their own errors (e.g. "roles must alternate")
            raise FormatError(f"the chat template rejected this conversation: {err}") from None
        bos = self.duplicate_bos
        return text[len(bos) :] if bos and text.startswith(bos) else text


def make_renderer(spec: DatasetSpec, tokenizer: Any, columns: Sequence[str]) -> Renderer:
    """The renderer of `spec.format`; checks the columns (and templates) up front and raises FormatError."""
    ctx = _Context(spec, tokenizer, tuple(columns))
    builders: dict[DatasetFormat, Callable[[_Context], Renderer]] = {
        DatasetFormat.chat: _chat_renderer,
        DatasetFormat.prompt_completion: _prompt_completion_renderer,
        DatasetFormat.text: _text_renderer,
        DatasetFormat.template: _template_renderer,
        DatasetFormat.preference: _preference_renderer,
    }
    return builders[spec.format](ctx)


def render_inference_prompt(spec: DatasetSpec, tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """`prompt` formatted exactly as training prompts of `spec.format` are, for generation before/after training.

    Preference data may hold text or chat-shaped pairs; a tokenizer with a chat template is taken to
    mean chat-shaped ones, the common case for instruct models.
    """
    system = system if system is not None else spec.system_prompt
    ctx = _Context(spec, tokenizer, ())
    messages = _with_system([{"role": "user", "content": prompt}], system)
    if spec.format is DatasetFormat.chat or (spec.format is DatasetFormat.preference and tokenizer.chat_template):
        _require_chat_template(tokenizer)
        return ctx.chat_prompt(messages)
    # The template the adapter ships: what a server renders is what is rendered here.
    return ctx.chat_prompt(messages, training_chat_template(spec, tokenizer))


# A chat template that renders what `_raw_prompt` writes: the system prompt and a blank line, the
# user's text, a newline before the answer unless whitespace is there already, the answer and eos.
# `x[-1:].strip()` is empty exactly when x ends with whitespace (Python's isspace). It starts with
# the bos that training's tokenization added, since apply_chat_template tokenizes without it.
_RAW_CHAT_TEMPLATE = """\
{%- set ns = namespace(text=bos_prefix) -%}
{%- set eos = eos_token or "" -%}
{%- if default_system and (messages | selectattr("role", "equalto", "system") | list | length) == 0 -%}
  {%- set ns.text = ns.text + default_system + "\\n\\n" -%}
{%- endif -%}
{%- for message in messages -%}
  {%- if message.role == "system" -%}
    {%- if message.content -%}{%- set ns.text = ns.text + message.content + "\\n\\n" -%}{%- endif -%}
  {%- elif message.role == "assistant" -%}
    {%- if ns.text[-1:].strip() and message.content[:1].strip() -%}{%- set ns.text = ns.text + "\\n" -%}{%- endif -%}
    {%- set ns.text = ns.text + message.content -%}
    {%- if not message.content.endswith(eos) -%}{%- set ns.text = ns.text + eos -%}{%- endif -%}
  {%- else -%}
    {%- set ns.text = ns.text + message.content -%}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt and ns.text[-1:].strip() -%}{%- set ns.text = ns.text + "\\n" -%}{%- endif -%}
{{- ns.text -}}"""


def training_chat_template(spec: DatasetSpec, tokenizer: Any) -> str | None:
    """The chat template that renders prompts as training saw them, for the adapter to ship; None when the
    base's own template is the one training used (format chat, chat-shaped preference pairs) or there are
    no prompts (format text).

    Written by hand: transformers has no template for "plain text prompt", and this one must follow
    `_raw_prompt` exactly; `dataset.systemPrompt` is built in as the default system message.
    """
    raw = (DatasetFormat.template, DatasetFormat.prompt_completion)
    if spec.format not in raw and not (spec.format is DatasetFormat.preference and not tokenizer.chat_template):
        return None
    bos = tokenizer.bos_token or ""
    constants = {"bos_prefix": bos if bos and _adds_bos(tokenizer) else "", "default_system": spec.system_prompt or ""}
    # Jinja reads a JSON string as a string literal (same escapes), so any system prompt is safe to embed.
    header = "".join(f"{{%- set {name} = {json.dumps(value)} -%}}\n" for name, value in constants.items())
    return header + _RAW_CHAT_TEMPLATE


# ---------------------------------------------------------------- per format


def _chat_renderer(ctx: _Context) -> Renderer:
    """Chat rows are conversations (a messages column) or question/answer columns; a mapping decides."""
    _require_chat_template(ctx.tokenizer)
    mapped = ctx.spec.columns
    if mapped.messages is not None:
        return _chat_messages_renderer(ctx, ctx.require("messages"))
    if mapped.prompt or mapped.completion:
        return _chat_qa_renderer(ctx)
    for column in ("messages", "conversations"):  # "conversations": ShareGPT's usual name
        if column in ctx.columns:
            return _chat_messages_renderer(ctx, column)
    if {"prompt", "completion"} <= set(ctx.columns):
        return _chat_qa_renderer(ctx)
    raise FormatError(
        "format chat needs a messages column ('messages', or dataset.columns.messages) or prompt and "
        f"completion columns (dataset.columns.prompt/completion){ctx.listing()}"
    )


def _chat_messages_renderer(ctx: _Context, column: str) -> Renderer:
    reasoning_col, system_col = ctx.optional("reasoning"), ctx.optional("system")
    end = _turn_end(ctx.tokenizer)

    def render(rows: Sequence[Row]) -> dict[str, str]:
        row = rows[0]
        messages = _messages(row.get(column), column)
        if messages[-1]["role"] != "assistant":
            raise FormatError(f"column {column!r}: the last message must be the assistant's answer")
        *history, answer = messages
        reasoning = row.get(reasoning_col) if reasoning_col else _message_reasoning(answer)
        # Reasoning kept inside the message is wrapped too, unless thinkTags is explicitly false.
        wrap = ctx.spec.wrap_reasoning if reasoning_col or ctx.spec.think_tags is not None else True
        prompt = ctx.chat_prompt(_with_system(history, _system(ctx, row, system_col)))
        return {"prompt": prompt, "completion": _completion(prompt, reasoning, answer["content"], end, wrap)}

    return render


def _chat_qa_renderer(ctx: _Context) -> Renderer:
    prompt_col, completion_col = ctx.require("prompt"), ctx.require("completion")
    reasoning_col, system_col = ctx.optional("reasoning"), ctx.optional("system")
    end = _turn_end(ctx.tokenizer)

    def render(rows: Sequence[Row]) -> dict[str, str]:
        row = rows[0]
        user = [{"role": "user", "content": _required_text(row, prompt_col)}]
        prompt = ctx.chat_prompt(_with_system(user, _system(ctx, row, system_col)))
        answer = _required_text(row, completion_col)
        reasoning = row.get(reasoning_col) if reasoning_col else None
        return {"prompt": prompt, "completion": _completion(prompt, reasoning, answer, end, ctx.spec.wrap_reasoning)}

    return render


def _prompt_completion_renderer(ctx: _Context) -> Renderer:
    prompt_col, completion_col = ctx.require("prompt"), ctx.require("completion")
    reasoning_col, system_col = ctx.optional("reasoning"), ctx.optional("system")

    def render(rows: Sequence[Row]) -> dict[str, str]:
        row = rows[0]
        answer = _required_text(row, completion_col)
        reasoning = row.get(reasoning_col) if reasoning_col else None
        body = _completion_body("", reasoning, answer, ctx.spec.wrap_reasoning)
        prompt = _raw_prompt(_required_text(row, prompt_col), _system(ctx, row, system_col), body)
        return {"prompt": prompt, "completion": body + _eos(ctx.tokenizer, body)}

    return render


def _text_renderer(ctx: _Context) -> Renderer:
    column = ctx.require("text")

    def render(rows: Sequence[Row]) -> dict[str, str]:
        text = _required_text(rows[0], column)
        return {"text": text + _eos(ctx.tokenizer, text)}

    return render


def _template_renderer(ctx: _Context) -> Renderer:
    template = ctx.spec.template
    assert template is not None  # DatasetSpec's validator guarantees it for format template
    grouped = template.group_size > 1
    render_prompt = _compile_template(ctx, "prompt", template.prompt, grouped)
    render_completion = _compile_template(ctx, "completion", template.completion, grouped)
    system_col = ctx.optional("system")

    def render(rows: Sequence[Row]) -> dict[str, str]:
        # Null cells are left out so that StrictUndefined names them instead of rendering "None".
        cells = [{k: v for k, v in row.items() if v is not None} for row in rows]
        variables = {"rows": cells} if grouped else cells[0]
        body = render_completion(variables)
        prompt = _raw_prompt(render_prompt(variables), _system(ctx, rows[0], system_col), body)
        return {"prompt": prompt, "completion": body + _eos(ctx.tokenizer, body)}

    return render


def _compile_template(ctx: _Context, field: str, source: str, grouped: bool) -> Callable[[dict[str, Any]], str]:
    """A Jinja2 template over the row's columns (or `rows`), sandboxed; unknown variables are errors.

    Variables are checked against the columns before any row is rendered, so a typo fails at once.
    """
    from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined)
    name = f"dataset.template.{field}"
    try:
        compiled = env.from_string(source)
        unknown = meta.find_undeclared_variables(env.parse(source)) - set(env.globals)
    except TemplateSyntaxError as err:
        raise FormatError(f"{name} line {err.lineno}: {err.message}") from None
    unknown -= {"rows"} if grouped else set(ctx.columns)
    if unknown:
        hint = " (with groupSize > 1 the rows are in `rows`: {% for row in rows %}{{ row.x }}{% endfor %})"
        raise FormatError(f"{name}: unknown variable {sorted(unknown)[0]!r}{hint if grouped else ''}{ctx.listing()}")

    def render(variables: dict[str, Any]) -> str:
        try:
            return compiled.render(variables)
        except TemplateError as err:  # UndefinedError: a null cell or a missing key of `rows`
            raise FormatError(f"{name}: {err.message} (null, missing or unknown in this row)") from None

    return render


def _preference_renderer(ctx: _Context) -> Renderer:
    chosen_col, rejected_col = ctx.require("chosen"), ctx.require("rejected")
    prompt_col, system_col = ctx.optional("prompt"), ctx.optional("system")

    def render(rows: Sequence[Row]) -> dict[str, str]:
        row = rows[0]
        chosen, rejected = row.get(chosen_col), row.get(rejected_col)
        prompt = row.get(prompt_col) if prompt_col else None
        system = _system(ctx, row, system_col)
        if isinstance(chosen, list) or isinstance(rejected, list) or isinstance(prompt, list):
            return _chat_pair(ctx, prompt, chosen, rejected, system, (prompt_col, chosen_col, rejected_col))
        if prompt_col is None:
            raise FormatError(f"text pairs need a prompt column (dataset.columns.prompt){ctx.listing()}")
        good, bad = _required_text(row, chosen_col), _required_text(row, rejected_col)
        return {
            "prompt": _raw_prompt(_required_text(row, prompt_col), system, good),
            "chosen": good + _eos(ctx.tokenizer, good),
            "rejected": bad + _eos(ctx.tokenizer, bad),
        }

    return render


def _chat_pair(
    ctx: _Context, prompt: Any, chosen: Any, rejected: Any, system: str | None, names: tuple[str | None, str, str]
) -> dict[str, str]:
    """A chat-shaped preference pair: prompt messages (explicit, or the shared history of both answers)."""
    _require_chat_template(ctx.tokenizer)
    prompt_col, chosen_col, rejected_col = names
    good, bad = _messages(chosen, chosen_col), _messages(rejected, rejected_col)
    if prompt_col is not None and prompt is not None:
        history = _messages(prompt, prompt_col) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    elif good[:-1] == bad[:-1] and good[:-1]:
        history = good[:-1]
    else:
        raise FormatError(
            f"columns {chosen_col!r} and {rejected_col!r}: without a prompt column both conversations must share "
            "all messages but the last"
        )
    for column, conversation in ((chosen_col, good), (rejected_col, bad)):
        if conversation[-1]["role"] != "assistant":
            raise FormatError(f"column {column!r}: the last message must be the assistant's answer")
    text = ctx.chat_prompt(_with_system(history, system))
    end = _turn_end(ctx.tokenizer)
    return {
        "prompt": text,
        "chosen": _completion(text, None, good[-1]["content"], end, wrap=False),
        "rejected": _completion(text, None, bad[-1]["content"], end, wrap=False),
    }


# ---------------------------------------------------------------- shared pieces


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise FormatError(
            "this format renders prompts with the tokenizer's chat template, but the model's tokenizer has none; "
            "use dataset.format prompt-completion or template for a base model"
        )


def _required_text(row: Row, column: str) -> str:
    """The cell as text; missing, null, empty or list cells are errors."""
    value = row.get(column)
    if value is None:
        raise FormatError(f"column {column!r} is empty (null or missing in this row)")
    if isinstance(value, (list, dict)):
        raise FormatError(f"column {column!r} holds a {type(value).__name__}, expected text")
    text = str(value)
    if not text.strip():
        raise FormatError(f"column {column!r} is an empty string")
    return text


def _system(ctx: _Context, row: Row, system_col: str | None) -> str | None:
    """The row's system column when it has one, else dataset.systemPrompt."""
    if system_col is not None:
        value = row.get(system_col)
        if isinstance(value, str) and value.strip():
            return value
    return ctx.spec.system_prompt


def _messages(value: Any, column: str) -> list[dict[str, str]]:
    """A list of {role, content} messages; ShareGPT's {from, value} is translated."""
    if not isinstance(value, list) or not value:
        raise FormatError(f"column {column!r} must hold a non-empty list of messages, got {type(value).__name__}")
    messages = []
    for position, message in enumerate(value, 1):
        if not isinstance(message, Mapping):
            raise FormatError(f"column {column!r}: message {position} is not an object with role and content")
        role = message.get("role") or SHAREGPT_ROLES.get(str(message.get("from")))
        content = message.get("content", message.get("value"))
        if not role or not isinstance(content, str):
            raise FormatError(f"column {column!r}: message {position} needs a role and a text content")
        entry = {"role": role, "content": content}
        entry.update({k: message[k] for k in MESSAGE_REASONING_KEYS if message.get(k)})
        messages.append(entry)
    return messages


def _message_reasoning(message: Mapping[str, Any]) -> str | None:
    return next((message[k] for k in MESSAGE_REASONING_KEYS if message.get(k)), None)


def _with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """`messages` with a leading system message, unless there is none to add or one already."""
    if not system or any(m["role"] == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]


def _adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing text puts a bos token in front by itself (Llama's tokenizers do)."""
    ids = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id and ids != plain


def _turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant message (e.g. `<|im_end|>`), plus eos if it lacks it.

    Found by rendering a sentinel answer, since templates do not declare it; falls back to the eos token.
    """
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template that cannot render the probe: eos alone still teaches stopping
        text = ""
    end = text.split(_SENTINEL, 1)[1].rstrip() if _SENTINEL in text else ""
    return end + _eos(tokenizer, end)


def _eos(tokenizer: Any, text: str) -> str:
    """The eos token to append to `text`, or "" when it already ends with it."""
    eos = tokenizer.eos_token or ""
    return "" if not eos or text.endswith(eos) else eos


def _completion(prompt: str, reasoning: Any, answer: str, end: str, wrap: bool) -> str:
    """A chat answer after `prompt`: reasoning (see _completion_body), the answer, the turn's end."""
    body = _completion_body(prompt, reasoning, answer, wrap)
    return body + ("" if body.endswith(end) else end)


def _completion_body(prompt: str, reasoning: Any, answer: str, wrap: bool) -> str:
    """The answer, after its reasoning: a `<think>` block when wrapping, else plain text.

    R1-Distill generation prompts already open `<think>\\n`: the block then continues it instead of
    opening a second one, and an answer without reasoning still closes it.
    """
    thought = str(reasoning).strip() if reasoning is not None else ""
    if thought and not wrap:
        return f"{thought}\n\n{answer}"
    opened = _open_think(prompt)
    if not thought and not opened:
        return answer
    block = f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n" if thought else f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"
    return block[len(opened) :] + answer


def _open_think(prompt: str) -> str:
    """The start of a think block the prompt ends with ("<think>\\n", "<think>"), or ""."""
    for opening in (f"{THINK_OPEN}\n", THINK_OPEN):
        if prompt.endswith(opening):
            return opening
    return ""


def _raw_prompt(prompt: str, system: str | None, completion: str) -> str:
    """A plain-text prompt: the system prompt and a blank line first; a newline before the answer.

    The newline keeps prompt and answer apart (and on separate tokens) unless the data already
    puts whitespace between them.
    """
    text = f"{system}\n\n{prompt}" if system else prompt
    if text[-1:].isspace() or completion[:1].isspace():
        return text
    return text + "\n"
