"""`kubetune`: the user's command line.

    kubetune crd [-o crds/finetunejob.yaml] [--check]   print or refresh the CRD
    kubetune validate examples/*.yaml                    the operator's checks, field by field
    kubetune render job.yaml [--attempt N]               what the operator would create
    kubetune run job.yaml [--output DIR]                 train locally through the pod's launcher
    kubetune generate OUTPUT_DIR "prompt"                try a trained adapter

`run` and `generate` import the trainer (torch) lazily, so the other verbs stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubetune_trainer.recipe import RecipeError


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
    from kubetune_trainer.manifest import load_finetunejobs

    failed = 0
    for path in args.files:
        try:
            jobs = load_finetunejobs(path)
        except (RecipeError, OSError, ValueError) as error:
            print(f"INVALID {error}", file=sys.stderr)
            failed += 1
            continue
        names = ", ".join(job.metadata.name for job in jobs)
        print(f"ok      {path}: {names}")
    return 1 if failed else 0


def _render(args: argparse.Namespace) -> int:
    from kubetune_operator.render import render_yaml
    from kubetune_trainer.manifest import load_finetunejobs

    # Several files (`kubetune render examples/*.yaml`) make one YAML stream, like `helm template`.
    for index, path in enumerate(args.file):
        for number, job in enumerate(load_finetunejobs(path)):
            sys.stdout.write("---\n" if index or number else "")
            sys.stdout.write(render_yaml(job, attempt=args.attempt, namespace=args.namespace))
    return 0


def _run(args: argparse.Namespace) -> int:
    from kubetune_trainer.local import run_local

    return run_local(args.file, output=args.output)


def _generate(args: argparse.Namespace) -> int:
    from kubetune_trainer.generate import generate_cli

    return generate_cli(args.output_dir, args.prompt, max_new_tokens=args.max_new_tokens)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of `kubetune`."""
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    crd = verbs.add_parser("crd", help="print or refresh the FineTuneJob CRD")
    crd.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    crd.add_argument("--check", action="store_true", help="fail if the file differs from the model")
    crd.set_defaults(func=_crd)

    validate = verbs.add_parser("validate", help="check FineTuneJob files as the operator would")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_validate)

    render = verbs.add_parser("render", help="print the objects the operator would create")
    render.add_argument("file", nargs="+", help="FineTuneJob files")
    render.add_argument("--attempt", type=int, default=0)
    render.add_argument("--namespace", default="default")
    render.set_defaults(func=_render)

    run = verbs.add_parser("run", help="fine-tune locally, as a trainer pod would")
    run.add_argument("file")
    run.add_argument("--output", default=None, help="workspace directory (default: ./out/<name>)")
    run.set_defaults(func=_run)

    generate = verbs.add_parser("generate", help="generate with a trained adapter or merged model")
    generate.add_argument("output_dir")
    generate.add_argument("prompt")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kubetune` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as error:
        print(f"invalid FineTuneJob: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
