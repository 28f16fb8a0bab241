"""How the CLI shows a manifest's records to people: `edgeqa info`, the export's and the parity
gate's reports (stdlib only, so the server's /info and the export's errors show the same text)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeqa.manifest_schema import ManifestRecord, OutlierSearch, ParityRecord, QuantizationRecord


def describe(manifest: ManifestRecord) -> str:
    """A human-readable summary of an artifact, as `edgeqa info` prints it."""
    m, d = manifest, manifest.dims
    lines = [
        f"model           {m.model_name}",
        f"format          {m.format_version} (edgeqa {m.versions.get('edgeqa', '?')}, "
        f"onnxruntime {m.versions.get('onnxruntime', '?')})",
        f"shape           {d.num_layers}+{d.num_decoder_layers} layers, {d.num_heads} heads x {d.d_kv}, "
        f"d_model {d.d_model}, vocab {d.vocab_size}",
        f"size            {m.total_bytes / 1e6:.1f} MB in {len(m.files)} files",
    ]
    lines += [f"  {role:<17} {e.path} ({e.size / 1e6:.1f} MB)" for role, e in m.files.items()]
    q = m.quantization
    lines.append(f"quantization    {quantization_summary(q) if q else 'none (float32)'}")
    if q and q.outliers:
        lines.append(f"outliers        {q.outliers.mode}: {outliers_summary(q.outliers)}")
    if q and q.export_cpu:
        lines.append(f"exported on     {q.export_cpu.machine}, VNNI {'yes' if q.export_cpu.vnni else 'no'}")
    lines += [
        f"shared          {m.files[t.role].path}: {t.dtype} {'x'.join(map(str, t.shape))}, "
        f"one tensor for {' and '.join(t.names)}"
        for t in m.shared_tensors
    ]
    g = m.generation
    lines += [
        f"prompt          {m.prompt_template!r}",
        f"limits          {m.max_input_tokens} input tokens, {m.max_answer_tokens} answer tokens",
        f"generation      max_new_tokens {g.max_new_tokens}, num_beams {g.num_beams}",
        f"parity          {parity_summary(m.parity) if m.parity else 'not checked'}",
    ]
    return "\n".join(lines)


def quantization_summary(q: QuantizationRecord) -> str:
    """Method, preset, weight layout, activations and float nodes on one line."""
    weights = f"weight blocks of {q.block_size}" if q.is_int4 else f"per-channel {q.per_channel}"
    layout = weights + ("" if q.is_int4 else f", reduce-range {q.reduce_range}")
    layout += f", activations {q.activation_granularity or 'per-tensor'}"
    return f"{q.method} preset {q.preset}, {layout}, --keep-fp32 {','.join(q.keep_fp32) or 'none'}"


def outliers_summary(search: OutlierSearch) -> str:
    """What the export's search smoothed and left in float, and what it cost, on one line."""
    smoothed = sum(s.channels for s in search.smoothing)
    parts = [f"{smoothed} channels in {len(search.smoothing)} activations smoothed" if smoothed else "no smoothing"]
    if search.float_groups:
        names = ", ".join(g.group for g in search.float_groups)
        groups = f"{len(search.float_groups)} group{'s' if len(search.float_groups) > 1 else ''}"
        parts.append(f"{groups} float ({search.float_share * 100:.1f}% of weights: {names})")
    else:
        parts.append("no fallback")
    parts.append(f"{len(search.attempts)} gate runs, {search.seconds:.0f} s")
    return "; ".join(parts)


def parity_summary(p: ParityRecord) -> str:
    """The gate's verdict and figures on one line."""
    return (
        f"{'PASS' if p.passed else 'FAIL'} on {p.samples} questions: ROUGE-L "
        f"{p.reference_rouge.get('rougeL', 0.0) * 100:.2f} (PyTorch) vs "
        f"{p.artifact_rouge.get('rougeL', 0.0) * 100:.2f}, exact match "
        f"{p.reference_exact_match * 100:.1f}% vs {p.artifact_exact_match * 100:.1f}%, identical answers "
        f"{p.identical_answers * 100:.1f}%, latency {p.reference_ms:.1f} vs {p.artifact_ms:.1f} ms"
    )


def parity_table(p: ParityRecord) -> str:
    """A Markdown table of the figures and the verdict."""
    rows = ["| metric | PyTorch | artifact | difference |", "| --- | --- | --- | --- |"]
    for key, value in p.reference_rouge.items():
        other = p.artifact_rouge.get(key, 0.0)
        rows.append(f"| {key} | {value * 100:.2f} | {other * 100:.2f} | {(other - value) * 100:+.2f} |")
    em, em_artifact = p.reference_exact_match, p.artifact_exact_match
    rows.append(f"| exact match % | {em * 100:.1f} | {em_artifact * 100:.1f} | {(em_artifact - em) * 100:+.1f} |")
    rows.append(
        f"| mean latency ms | {p.reference_ms:.1f} | {p.artifact_ms:.1f} | "
        f"x{p.reference_ms / max(p.artifact_ms, 1e-9):.2f} faster |"
    )
    return "\n".join(rows) + (
        f"\n\n{p.samples} questions ({p.split}), {p.max_new_tokens} new tokens at most; identical answers "
        f"{p.identical_answers * 100:.1f}%, token agreement {p.token_agreement * 100:.1f}%; "
        f"gate ({p.gate}): {'PASS' if p.passed else 'FAIL'}"
    )
