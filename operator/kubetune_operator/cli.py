"""`kubetune`: the user's command line.

    kubetune crd [-o crds/finetunejob.yaml] [--check]   print or refresh the CRD
    kubetune validate examples/*.yaml                    the operator's checks, field by field (- : stdin)
    kubetune render job.yaml [--attempt N]               what the operator would create
    kubetune run job.yaml [--output DIR] [--fresh]       train locally through the pod's launcher
    kubetune generate OUTPUT_DIR "prompt"                try a trained adapter
    kubetune merge OUTPUT_DIR                            merge the adapter into its base (output/merged)
    kubetune export OUTPUT_DIR --gguf                    the merged model as a GGUF file (llama.cpp)

`run` and `generate` import the trainer (torch) lazily, so the other verbs stay fast.

Errors the user must fix (a missing file, a YAML syntax error, a refused field) are
printed as one line each, naming the file and line:column or the field, and the fix;
the exit status is then 2 (`validate`: 1 when a manifest is refused, 2 when a file
cannot be read at all).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetune_api.recipe import FineTuneJob, RecipeError

STDIN = "-"
# The recipe model's message for a field it does not know (recipe.format_validation_error).
_UNKNOWN_FIELD = re.compile(r"^(?P<path>[^\s:]+): unknown field\b.*$")
# What usually causes each YAML parser complaint, so the one line can say how to fix it.
_YAML_FIXES = (
    ("mapping values are not allowed", "quote the value: an unquoted ': ' inside a value starts a mapping"),
    ("found character '\\t'", "indent with spaces: YAML does not allow tabs"),
    ("could not find expected ':'", "add ':' after the key, or quote a value that spans lines"),
    ("did not find expected key", "align this key with its siblings (same indentation)"),
    ("found undefined alias", "define the &anchor before using *alias, or quote the '*'"),
    ("found unexpected end of stream", "close the quote or bracket that is still open"),
)


class CliError(Exception):
    """A problem the user must fix; its message is the one line to print (exit status 2)."""


def _yaml_fix(problem: str) -> str:
    return next((fix for needle, fix in _YAML_FIXES if needle in problem),
                "fix the YAML there (indentation, quoting, a missing ':')")


def _syntax_error(path: str, error: Exception) -> CliError:
    """`file:line:column: YAML syntax error: <problem>; <fix>` for a YAML or JSON parser error."""
    if isinstance(error, json.JSONDecodeError):
        return CliError(f"{path}:{error.lineno}:{error.colno}: JSON syntax error: {error.msg}; fix the JSON there")
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return CliError(f"{where}: YAML syntax error: {problem}; {_yaml_fix(problem)}")


def read_jobs(path: str) -> list[FineTuneJob]:
    """The FineTuneJobs of `path` (`-`: standard input); a CliError (one line) if it cannot be read or parsed.

    A manifest that parses but is refused by the recipe model raises RecipeError, with field suggestions.
    """
    from kubetune_api.manifest import load_finetunejobs

    shown = "<stdin>" if path == STDIN else path
    try:
        return load_finetunejobs(shown, sys.stdin.read() if path == STDIN else None)
    except FileNotFoundError:
        raise CliError(f"{path}: no such file; check the path (or pass - to read standard input)") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a folder; name a YAML file (e.g. {path.rstrip('/')}/job.yaml)") from None
    except OSError as error:
        raise CliError(f"{path}: cannot read it ({error.strerror}); check its permissions") from None
    except UnicodeDecodeError as error:
        raise CliError(f"{path}: byte {error.start + 1} is not UTF-8 text; save the file as UTF-8") from None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise _syntax_error(shown, error) from None
    except RecipeError as error:
        raise RecipeError(suggest_fields(str(error))) from None


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `annotation` (X, X | None, list[X], dict[str, X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list, dict, typing.Annotated):
        for argument in typing.get_args(annotation):
            model = _model_of(argument)
            if model is not None:
                return model
    return None


def _model_at(path: list[str]) -> type[BaseModel] | None:
    """The recipe model class that the manifest field `path` (camelCase, list indices as numbers) is in."""
    model: type[BaseModel] | None = FineTuneJob
    for part in path:
        if model is None:
            return None
        if part.isdigit():  # a list index: the item model is already current
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        model = _model_of(field.annotation) if field is not None else None
    return model


def suggest_fields(message: str) -> str:
    """`message` with each `path: unknown field` line naming the closest field the model has.

    difflib against the model's camelCase aliases: pydantic reports the unknown key but not what
    was meant, and the CRD's field names are the only ones the user can write.
    """
    lines = []
    for line in message.splitlines():
        match = _UNKNOWN_FIELD.match(line)
        parts = match["path"].split(".") if match else []
        model = _model_at(parts[:-1]) if parts else None
        if model is not None:
            known = [field.alias or name for name, field in model.model_fields.items()]
            close = difflib.get_close_matches(parts[-1], known, n=1, cutoff=0.6)
            parent = ".".join(parts[:-1])
            hint = f"did you mean {parent}.{close[0]}?" if close else f"{parent} has: {', '.join(known)}"
            line = f"{match['path']}: unknown field; {hint}"
        lines.append(line)
    return "\n".join(lines)


def _crd(args: argparse.Namespace) -> int:
    from kubetune_operator.crd import render_crd_yaml

    text = render_crd_yaml()
    if args.check:
        current = Path(args.output).read_text(encoding="utf-8") if Path(args.output).exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `kubetune crd -o {args.output}`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            jobs = read_jobs(path)
        except CliError as error:
            print(f"INVALID {error}", file=sys.stderr)
            status = 2
            continue
        except RecipeError as error:
            print(f"INVALID {error}", file=sys.stderr)
            status = max(status, 1)
            continue
        names = ", ".join(job.metadata.name for job in jobs)
        print(f"ok      {path}: {names}")
    return status


def _render(args: argparse.Namespace) -> int:
    from kubetune_operator.render import render_yaml

    # Every file is read before anything is printed: an error never follows half a stream.
    jobs = [job for path in args.file for job in read_jobs(path)]
    # Several files (`kubetune render examples/*.yaml`) make one YAML stream, like `helm template`.
    for number, job in enumerate(jobs):
        sys.stdout.write("---\n" if number else "")
        sys.stdout.write(render_yaml(job, attempt=args.attempt, namespace=args.namespace))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.file == STDIN:
        raise CliError("kubetune run reads a file, not standard input: relative paths in it resolve against its folder")
    read_jobs(args.file)  # the one-line errors, before torch is imported
    from kubetune_trainer.local import run_local

    return run_local(args.file, output=args.output, fresh=args.fresh)


def _generate(args: argparse.Namespace) -> int:
    from kubetune_trainer.generate import generate_cli

    return generate_cli(args.output_dir, args.prompt, max_new_tokens=args.max_new_tokens)


def _merge(args: argparse.Namespace) -> int:
    from kubetune_trainer.generate import merge_cli

    return merge_cli(args.output_dir)


def _export(args: argparse.Namespace) -> int:
    if not args.gguf:
        raise CliError("name a format: --gguf (the only export besides `kubetune merge`'s transformers folder)")
    from kubetune_trainer.generate import export_cli

    return export_cli(args.output_dir, converter=args.converter, outtype=args.outtype)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of `kubetune`."""
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    crd = verbs.add_parser("crd", help="print or refresh the FineTuneJob CRD")
    crd.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    crd.add_argument("--check", action="store_true", help="fail if the file differs from the model")
    crd.set_defaults(func=_crd)

    validate = verbs.add_parser("validate", help="check FineTuneJob files as the operator would")
    validate.add_argument("files", nargs="+", help="FineTuneJob files; - reads standard input")
    validate.set_defaults(func=_validate)

    render = verbs.add_parser("render", help="print the objects the operator would create")
    render.add_argument("file", nargs="+", help="FineTuneJob files")
    render.add_argument("--attempt", type=int, default=0)
    render.add_argument("--namespace", default="default")
    render.set_defaults(func=_render)

    run = verbs.add_parser("run", help="fine-tune locally, as a trainer pod would")
    run.add_argument("file")
    run.add_argument("--output", default=None, help="workspace directory (default: ./out/<name>)")
    run.add_argument("--fresh", action="store_true", help="start over: delete the workspace's results and checkpoints")
    run.set_defaults(func=_run)

    generate = verbs.add_parser("generate", help="generate with a trained adapter or merged model")
    generate.add_argument("output_dir")
    generate.add_argument("prompt")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.set_defaults(func=_generate)

    merge = verbs.add_parser("merge", help="merge a trained adapter into its base (like axolotl merge-lora)")
    merge.add_argument("output_dir", help="the run's output folder or `kubetune run` workspace")
    merge.set_defaults(func=_merge)

    export = verbs.add_parser("export", help="export a trained result for llama.cpp/Ollama")
    export.add_argument("output_dir", help="the run's output folder or `kubetune run` workspace")
    export.add_argument("--gguf", action="store_true", help="merge, then convert with llama.cpp's converter")
    export.add_argument("--converter", default=None, help="path of llama.cpp's convert_hf_to_gguf.py")
    export.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                        help="GGUF tensor type (quantize further with llama-quantize)")
    export.set_defaults(func=_export)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kubetune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kubetune` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as error:
        print(f"kubetune {args.verb}: {error}", file=sys.stderr)
        return 2
    except RecipeError as error:
        print(f"invalid FineTuneJob: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
