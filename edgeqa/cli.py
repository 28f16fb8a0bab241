"""The `edgeqa` command: a thin layer over the library. Heavy imports happen inside commands,
so `edgeqa --help` and `edgeqa ask` never load torch."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from edgeqa.cli_fields import PATH, fields_as_options
from edgeqa.demo import SCHEDULES
from edgeqa.demo_documents import RECIPE as DOCUMENTS_RECIPE
from edgeqa.documents.answers import RETRIEVAL_WEIGHT
from edgeqa.documents.query import DEFAULT_K
from edgeqa.errors import EdgeQAError
from edgeqa.export.config import PARITY_MAX_NEW_TOKENS, PARITY_SAMPLES, ExportConfig
from edgeqa.finetune.config import FinetuneConfig
from edgeqa.manifest import WeightType
from edgeqa.runtime.options import GenerationOptions
from edgeqa.serve.config import ServeConfig, resolve_api_key

app = typer.Typer(
    name="edgeqa",
    help="Fine-tune FLAN-T5 for question answering, export it to quantized ONNX, answer on a CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: option names never cut short, switches shown without a value
)

F = TypeVar("F", bound=Callable[..., Any])


ArtifactArg = Annotated[Path, typer.Argument(help="Artifact folder written by `edgeqa export`.", **PATH)]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]


VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show everything the libraries log and warn, progress bars included.")
]


def _setup_logging(quiet: bool = False, verbose: bool = False, libraries: bool = False) -> None:
    from edgeqa.logs import setup_logging

    setup_logging(quiet=quiet, verbose=verbose, libraries=libraries)


def handle_errors(command: F) -> F:
    """Turn `EdgeQAError` into `error: <message>` and exit code 1 (traceback with EDGEQA_DEBUG=1)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EdgeQAError as e:
            if os.environ.get("EDGEQA_DEBUG") == "1":
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------- ask / info


@app.command()
@handle_errors
@fields_as_options(GenerationOptions, flags={"do_sample": ("--sample/--greedy",)}, show_defaults=False)
def ask(
    artifact: ArtifactArg,
    question: Annotated[str | None, typer.Argument(help="The question; omit it for an interactive prompt.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help='Questions: .jsonl ({"question": ...}) or .txt.', **PATH)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write --file answers here (JSONL).", **PATH)
    ] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Questions per batch with --file.")] = 8,
    verify: Annotated[bool, typer.Option(help="Check file checksums on load.")] = True,
    expect_sha256: Annotated[
        str | None, typer.Option("--expect-sha256", help="Refuse the artifact unless manifest.json has this sha256.")
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help="Read the answer from this passage: a text file, or - for stdin.")
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option("--index", help="Answer from the top passages of this index (`edgeqa index`).", **PATH),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="With --index: passages read per question.")] = DEFAULT_K,
    retrieval_weight: Annotated[
        float,
        typer.Option(
            help="With --index: how much a passage's retrieval log-probability counts beside the reader's score "
            "(0: the reader's score alone)."
        ),
    ] = RETRIEVAL_WEIGHT,
    *,
    fields: dict[str, Any],
) -> None:
    """Answer questions from an artifact on the CPU (generation options default to the artifact's).

    Example: edgeqa ask ./model-int8 "What is the capital of France?"

    From your documents: edgeqa ask ./model-int8 --index docs.edgeqa-index "How do I reset the router?"
    """
    from edgeqa.runtime import QAModel, questions

    _setup_logging(quiet=True)
    passage = questions.read_context(context) if context is not None else None
    request = questions.Ask(
        question, file, output, stream=stream, as_json=as_json, batch_size=batch_size, context=passage
    )
    if index is not None:
        from edgeqa.documents import DocumentsQA, Index
        from edgeqa.documents.answers import check_retrieval_weight
        from edgeqa.documents.asking import ask_index
        from edgeqa.documents.query import check_k

        check_k(k), check_retrieval_weight(retrieval_weight)  # before the model loads: bad options fail at once
        found = Index.open(index)
        model = QAModel.load(artifact, threads=threads, verify=verify, expect_sha256=expect_sha256)
        with DocumentsQA(model, found, k, retrieval_weight) as qa:
            ask_index(qa, request, model.options(**fields), _Terminal())
        return
    model = QAModel.load(artifact, threads=threads, verify=verify, expect_sha256=expect_sha256)
    questions.ask(model, request, model.options(**fields), _Terminal())


class _Terminal:
    """`edgeqa ask`'s console: answers on stdout, everything else on stderr."""

    def __init__(self) -> None:
        self.interactive = sys.stdin.isatty()

    def write(self, text: str) -> None:
        typer.echo(text, nl=False)

    def note(self, text: str) -> None:
        typer.echo(text, err=True)

    def read(self, prompt: str) -> str:
        try:
            import readline  # noqa: F401  (enables history and editing for input())
        except ImportError:
            pass
        if sys.stdout.isatty():
            return input(prompt)
        # answers go to a file or a pipe: the prompt is for the person (input() would write it to stdout)
        typer.echo(prompt, err=True, nl=False)
        return input()

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[Callable[[int], None]]:
        if not sys.stderr.isatty():  # a log file gets the summary line, not a bar's label
            yield lambda advanced: None
            return
        with typer.progressbar(length=total, label="answering", file=sys.stderr, width=0) as bar:
            yield bar.update


@app.command()
@handle_errors
def info(artifact: ArtifactArg, as_json: JsonOpt = False) -> None:
    """Show what an artifact's manifest says: model, sizes, quantization, prompt, parity.

    Example: edgeqa info ./model-int8
    """
    from edgeqa.cli_display import describe
    from edgeqa.manifest import Manifest

    manifest = Manifest.read(artifact)
    typer.echo(manifest.to_json() if as_json else describe(manifest), nl=not as_json)


# ---------------------------------------------------------------- verify


@app.command()
@handle_errors
def verify(
    artifact: ArtifactArg,
    expect_sha256: Annotated[
        str | None, typer.Option("--expect-sha256", help="Fail unless manifest.json has this sha256 (pin).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check an artifact received from elsewhere as the loader would (paths, sizes, checksums, graphs, tokenizer).

    Example: edgeqa verify ./model-int8 --expect-sha256 "$(sha256sum model-int8/manifest.json | cut -d' ' -f1)"
    """
    from edgeqa.errors import ArtifactError
    from edgeqa.runtime import verify_artifact

    _setup_logging(quiet=True)
    report = verify_artifact(artifact, expect_sha256=expect_sha256)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.ok:
        first = report.problems[0]
        raise ArtifactError(f"{artifact} failed {len(report.problems)} check(s), first {first.name}: {first.detail}")


# ---------------------------------------------------------------- finetune


@app.command()
@handle_errors
@fields_as_options(
    FinetuneConfig, flags={"output_dir": ("--output", "-o"), "learning_rate": ("--lr", "--learning-rate")}
)
def finetune(
    config: Annotated[
        Path | None, typer.Option(help="TOML file with FinetuneConfig fields; flags override it.", **PATH)
    ] = None,
    verbose: VerboseOpt = False,
    *,
    fields: dict[str, Any],
) -> None:
    """Fine-tune a T5 checkpoint for question answering (GPU if present; torchrun for several).

    Example: edgeqa finetune --model google/flan-t5-base --data qa.jsonl -o runs/qa
    """
    from edgeqa.finetune.resume import command_config

    settings = command_config(config, fields)  # validated here, before torch is imported

    from edgeqa.finetune import finetune as run
    from edgeqa.finetune import metrics_table

    _setup_logging(verbose=verbose, libraries=True)
    result = run(settings, progress_bars=verbose)
    if not result.main_process:  # under torchrun, one process reports
        return
    typer.echo(metrics_table(result.history))
    saved = f"step {result.saved_step or result.global_step} of {result.global_step}"
    typer.echo(f"\nbest checkpoint: {result.best_checkpoint}; final model: {result.final_dir} ({saved})")
    typer.echo(f"next: edgeqa export {result.final_dir} model-int8 --quantize")


# ---------------------------------------------------------------- export / parity


@app.command()
@handle_errors
@fields_as_options(ExportConfig, skip=("checkpoint", "output"))
def export(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder (e.g. RUN/final) or hub name.")],
    output: Annotated[Path, typer.Argument(help="Artifact folder to create.", **PATH)],
    verbose: VerboseOpt = False,
    *,
    fields: dict[str, Any],
) -> None:
    """Export a checkpoint to an ONNX artifact folder, optionally int8, checked by the parity gate.

    Example: edgeqa export runs/qa/final model-int8 --quantize
    """
    settings = ExportConfig(checkpoint=checkpoint, output=output, **fields)  # validated before any export work

    from edgeqa.cli_display import outliers_summary, parity_table
    from edgeqa.export import export_artifact

    _setup_logging(verbose=verbose, libraries=True)
    result = export_artifact(settings)
    if result.parity:
        typer.echo(parity_table(result.parity))
    quantization = result.manifest.quantization
    if quantization and quantization.outliers:
        typer.echo(f"\nto pass the gate ({quantization.outliers.mode}): {outliers_summary(quantization.outliers)}")
    size = result.manifest.total_bytes
    typer.echo(f"\nartifact: {result.output} ({size / 1e6:.1f} MB; float graphs were {result.fp32_bytes / 1e6:.1f} MB)")
    typer.echo(f'next: edgeqa ask {result.output} "your question"')


@app.command("parity")
@handle_errors
def parity_command(
    artifact: ArtifactArg,
    reference: Annotated[str, typer.Option(help="The PyTorch checkpoint the artifact came from.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Questions with answers, JSONL or CSV (default: the checkpoint's held-out split, as export uses, "
            "else the bundled validation).",
            **PATH,
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Questions to answer.")] = PARITY_SAMPLES,
    max_new_tokens: Annotated[
        int, typer.Option(help="Most answer tokens compared (the artifact's own answer length if shorter).")
    ] = PARITY_MAX_NEW_TOKENS,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Compare an artifact's answers with its PyTorch checkpoint's (ROUGE, agreement, latency); exit 1 on failure.

    Example: edgeqa parity model-int8 --reference runs/qa/final --data heldout.jsonl
    """
    from edgeqa.checkpoint import checkpoint_location
    from edgeqa.cli_display import parity_table
    from edgeqa.extras import import_extra

    for needed in ("torch", "transformers", "rouge_score"):  # the PyTorch side, imported only once it runs
        import_extra(needed, "export", "edgeqa parity")
    from edgeqa.export.parity import parity_records, run_parity

    _setup_logging(verbose=verbose, libraries=True)
    reference = checkpoint_location(reference)
    records = parity_records(reference, data, samples)
    report = run_parity(reference, artifact, records, max_new_tokens=max_new_tokens, threads=threads)
    typer.echo(json.dumps(dataclasses.asdict(report), indent=2) if as_json else parity_table(report))
    if not report.passed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- demo


class DemoData(StrEnum):
    """What `edgeqa demo` trains on."""

    facts = "facts"
    dolly = "dolly"


@app.command()
@handle_errors
def demo(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for everything the demo writes.", **PATH)
    ] = Path("edgeqa-demo"),
    data: Annotated[
        DemoData,
        typer.Option(help="facts: countries and cities, exact short answers; dolly: open QA, long answers (ROUGE)."),
    ] = DemoData.facts,
    model: Annotated[
        str | None, typer.Option(help="A real T5 checkpoint to fine-tune instead of the demo model.")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            help=f"Fine-tuning steps (default: facts {SCHEDULES['facts'].max_steps}, dolly "
            f"{SCHEDULES['dolly'].max_steps}, --documents {DOCUMENTS_RECIPE.max_steps})."
        ),
    ] = None,
    parity_samples: Annotated[int | None, typer.Option(help="Held-out questions for the parity gate.")] = None,
    force: Annotated[bool, typer.Option(help="Reuse a non-empty --output.")] = False,
    documents: Annotated[
        bool,
        typer.Option(
            "--documents",
            help="Answer from documents instead: a reader trained on counterfactual country pages, an index, sources.",
        ),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the whole pipeline offline on bundled data: fine-tune, export int8, answer.

    Example: edgeqa demo --output ./edgeqa-demo

    From documents: edgeqa demo --documents --output ./edgeqa-demo-documents
    """
    _setup_logging(verbose=verbose, libraries=True)
    if documents:
        from edgeqa.demo_documents import documents_summary, run_documents_demo

        if model is not None or data != DemoData.facts or parity_samples is not None:
            raise EdgeQAError(
                "--documents trains its own reader on its own pages: leave out --model, --data, --parity-samples"
            )
        if output == Path("edgeqa-demo"):
            output = Path("edgeqa-demo-documents")
        read = run_documents_demo(output, max_steps=max_steps, force=force, progress_bars=verbose)
        typer.echo(documents_summary(read))
        return
    from edgeqa.demo import run_demo, summary

    result = run_demo(
        output,
        data=data.value,
        model=model,
        max_steps=max_steps,
        parity_samples=parity_samples,
        force=force,
        progress_bars=verbose,
    )
    import importlib.util

    serve = importlib.util.find_spec("starlette") is not None  # `edgeqa serve` needs the serve extra
    typer.echo(summary(result, trained_model=model, serve=serve))


# ---------------------------------------------------------------- serve


@app.command()
@handle_errors
@fields_as_options(ServeConfig, skip=("artifact",), flags={"k": ("-k",)})
def serve(
    artifact: ArtifactArg,
    fields: dict[str, Any],
    api_key_file: Annotated[Path | None, typer.Option(help="Read the API key from this file.", **PATH)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Serve an artifact over HTTP: OpenAI-compatible API, /v1/answer, a web page; batches callers.

    Example: edgeqa serve ./model-int8 --port 8080

    From your documents: edgeqa serve ./model-int8 --index docs.edgeqa-index
    """
    from edgeqa.extras import import_extra

    # The server module, not the package: the package loads Starlette and uvicorn only on first use.
    run_server = import_extra("edgeqa.serve.server", "serve", "edgeqa serve").run_server

    _setup_logging(quiet)
    api_key = resolve_api_key(fields.get("api_key"), api_key_file)
    run_server(ServeConfig(artifact=artifact, **{**fields, "api_key": api_key}))


# ---------------------------------------------------------------- index


@app.command("index")
@handle_errors
def index_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="The index file (SQLite) to write.", **PATH)],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files and folders: .txt .md .html .jsonl, .pdf with the pdf extra.", **PATH),
    ] = None,
    update: Annotated[
        bool, typer.Option("--update", help="Re-index changed files only and drop deleted ones (no PATH: the same).")
    ] = False,
    artifact: Annotated[
        Path | None, typer.Option(help="Size passages for this artifact's tokenizer and input limit.", **PATH)
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(help="Size passages with this tokenizer.json (default: the bundled FLAN-T5 one).", **PATH),
    ] = None,
    passage_tokens: Annotated[
        int | None, typer.Option(help="Most tokens per passage (default: from --artifact, else 400).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index documents for `ask --index`: passages sized in the reader's tokens, in one SQLite file.

    Example: edgeqa index ./manuals notes.md -o docs.edgeqa-index --artifact ./model-int8
    """
    from edgeqa.documents import build_index
    from edgeqa.documents.sizing import resolve_sizing

    _setup_logging()
    sizing = resolve_sizing(artifact, tokenizer, passage_tokens, update=update and output.exists())

    with contextlib.ExitStack() as open_bar:
        bars: list[Any] = []

        def show(progress: Any) -> None:
            """A bar over the bytes to read, on stderr when it is a terminal (the totals come with the first file)."""
            if not sys.stderr.isatty():
                return
            if not bars:
                label = f"indexing {progress.files_total} files, {progress.bytes_total / 1e6:.1f} MB"
                bar = typer.progressbar(length=max(1, progress.bytes_total), label=label, file=sys.stderr, width=0)
                bars.append(open_bar.enter_context(bar))
            bars[0].update(progress.bytes_done - bars[0].pos)

        summary = build_index(
            paths or [],
            output,
            sizing.tokenizer,
            sizing.passage_tokens,
            update=update,
            progress=show,
            tokenizer_name=sizing.tokenizer_name,
        )
    typer.echo(json.dumps(summary.to_dict(), indent=2) if as_json else summary.format())


# ---------------------------------------------------------------- bench


@app.command()
@handle_errors
def bench(
    compare: Annotated[bool, typer.Option("--compare", help="Also run PyTorch, Optimum and CTranslate2.")] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Load-test `edgeqa serve` on loopback at 1, 4, 16, 64 callers instead.")
    ] = False,
    shapes: Annotated[str, typer.Option(help="Comma-separated model shapes: small, base.")] = "small,base",
    beam_shapes: Annotated[
        str, typer.Option(help="Shapes on which beam search (4 beams, batch 1 and 8) is measured too (slower).")
    ] = "small",
    artifact: Annotated[Path | None, typer.Option(help="Also measure this edgeqa artifact.", **PATH)] = None,
    new_tokens: Annotated[int, typer.Option(help="Forced answer length.")] = 32,
    inputs: Annotated[int, typer.Option(help="Prompts per measurement.")] = 32,
    rounds: Annotated[int, typer.Option(help="Rounds per engine.")] = 2,
    threads: Annotated[int, typer.Option(help="Threads for every engine.")] = 2,
    output: Annotated[Path, typer.Option("--output", "-o", help="Results folder.", **PATH)] = Path("bench-results"),
    max_batch_size: Annotated[int, typer.Option(help="With --serve: the server's --max-batch-size.")] = 8,
    soak: Annotated[
        bool,
        typer.Option(
            "--soak",
            help="With --serve: a mixed load (ordinary, streaming, disconnecting, invalid requests) for "
            "--soak-seconds at --callers callers on the first shape; counts 5xx, wrong answers, memory growth.",
        ),
    ] = False,
    soak_seconds: Annotated[float, typer.Option(help="With --soak: how long.")] = 600.0,
    callers: Annotated[int, typer.Option(help="With --soak: callers at once.")] = 32,
) -> None:
    """Benchmark the runtime side by side with the engines people would use instead.

    Example: edgeqa bench --compare --shapes small
    """
    _setup_logging(libraries=True)
    if serve and soak:
        from edgeqa.bench import soak as soaking

        shape = shapes.split(",")[0]
        cache = Path("/tmp/edgeqa-bench-cache")
        found = soaking.run_soak(shape, soak_seconds, callers, new_tokens, threads, cache, artifact)
        output.mkdir(parents=True, exist_ok=True)
        (output / "soak.json").write_text(json.dumps(soaking.as_json(found), indent=2) + "\n", encoding="utf-8")
        typer.echo(f"{shape} int8\n{soaking.TABLE_HEAD}\n{found.markdown()}")
        if found.server_errors or found.wrong_answers or found.rss_growth >= 0.05:
            raise typer.Exit(1)
        return
    if serve:
        from edgeqa.bench import serve_load

        results = serve_load.run_serve_benchmark(
            serve_load.ServeBenchConfig(
                shapes=tuple(s for s in shapes.split(",") if s),
                requests=inputs,
                new_tokens=new_tokens,
                threads=threads,
                max_batch_size=max_batch_size,
            )
        )
        typer.echo(serve_load.write(results, output).read_text())
        typer.echo(f"results: {output}/ (SERVE.md, serve.json)")
        return
    from edgeqa.bench.report import write
    from edgeqa.bench.run import ENGINES, BenchConfig, run_benchmark

    config = BenchConfig(
        shapes=tuple(s for s in shapes.split(",") if s),
        beam_shapes=tuple(s for s in beam_shapes.split(",") if s),
        engines=ENGINES if compare else tuple(e for e in ENGINES if e.startswith("edgeqa")),
        artifact=artifact,
        inputs=inputs,
        new_tokens=new_tokens,
        threads=threads,
        rounds=rounds,
        output=output,
    )
    result = run_benchmark(config)
    report = write(result, output, threads, new_tokens, inputs)
    typer.echo(report.read_text())
    typer.echo(f"results: {output}/ (README.md, results.json, chart.png)")


def bare_quantize_means_int8(argv: list[str]) -> list[str]:
    """`--quantize` with no value means `--quantize int8` (typer cannot declare an optional value).

    A following word that looks like a number format (int4, int3, fp16) is its value, checked by the
    option's choices; anything else (an option, a path) is the next argument.
    """
    normalized = []
    for position, word in enumerate(argv):
        normalized.append(word)
        following = argv[position + 1] if position + 1 < len(argv) else ""
        if word == "--quantize" and not re.fullmatch(r"(u?int|fp|float|bf)\d*", following):
            normalized.append(WeightType.INT8.value)
    return normalized


def exit_on_sigterm() -> None:
    """End on SIGTERM (`docker stop`, systemd, `timeout`) as on Ctrl-C: `finally` blocks run, so an export or an
    index build removes its temporary files (`main` then ends by the signal, as its sender expects). Not in a
    process a launcher started (torchrun, accelerate): it stops its workers itself, and one waiting in a
    collective could not clean up anyway."""
    if "LOCAL_RANK" in os.environ:
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def main() -> None:
    exit_on_sigterm()
    try:
        app(args=bare_quantize_means_int8(sys.argv[1:]))
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # cleaned up: now end as the signal ends a process
            os.kill(os.getpid(), signal.SIGTERM)
        raise


if __name__ == "__main__":
    main()
