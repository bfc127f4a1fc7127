"""bench.py's bookkeeping, without measuring anything: medians, table cells, the Markdown layout, where a run writes,
and the committed BENCHMARKS.md being the rendering of the committed BENCHMARKS.json."""
import json
import re

import pytest
from conftest import ROOT, require_oracle

import bench


def test_median_of_odd_and_even_counts():
    values = [5.0, 1.0, 3.0]
    assert bench.median(values) == 3.0
    assert values == [5.0, 1.0, 3.0]  # the caller's list is left in its order
    assert bench.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert bench.median([7.0]) == 7.0


def test_cells_show_seconds_as_milliseconds_and_megabytes_as_they_are():
    assert bench.cell([0.002, 0.0031, 0.004], "ms") == "3.1 [2.0 - 4.0]"
    assert bench.cell([691.46], "MB") == "691.5 [691.5 - 691.5]"
    assert bench.cell(None, "ms") == bench.cell([], "MB") == "-"


def test_simd_level_is_the_widest_extension():
    assert bench.simd_level({"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw"}) == "AVX-512"
    assert bench.simd_level({"sse2", "avx", "avx2"}) == "AVX2"
    assert bench.simd_level({"sse2", "avx"}) == "AVX"
    assert bench.simd_level(set()) == "unknown"


def results(**overrides):
    """A small run's results in the JSON layout bench.py saves."""
    info = dict(numpy="2.0.0", blas="scipy-openblas 0.3.27", blas_kernel="SkylakeX", torch="2.3.0+cpu",
                torch_cpu_capability="AVX512")
    rows = [dict(section="training step", case="tiny", ours=[0.003, 0.002, 0.004], theirs=[0.006], note="n1"),
            dict(section="generation, no cache", case="B=1", ours=[2.0], theirs=[0.5], note="n2"),
            dict(section="peak memory", case="step", ours=[300.0], theirs=[200.0], note="n3"),
            dict(section="tokenizer", case="train a BPE", ours=[0.1], theirs=None, note="no peer measured")]
    return dict(command="python bench.py --quick", date="2030-01-02 03:04 UTC",
                machine=dict(cpu="Example CPU 9000", cores=4, architecture="x86_64", simd="AVX-512", python="3.11.7"),
                threads={"1": dict(rows=rows, info=info)}, **overrides)


def table(text, section):
    """The lines of one section's table."""
    block = text.split(f"## {section}\n\n", 1)[1].split("\n\n", 1)[0]
    return block.splitlines()


def test_markdown_names_the_machine_and_each_section_its_own_columns():
    text = bench.markdown(results())
    head = text.split("## ", 1)[0]
    assert "Example CPU 9000, 4 cores" in head and "AVX-512" in head
    assert "SkylakeX kernels (AVX-512)" in head and "CPU capability AVX512" in head
    training = table(text, "training step")
    assert training[0] == "| threads | case | ours (ms) | PyTorch (ms) | ratio | note |"
    assert training[2] == "| 1 | tiny | 3.0 [2.0 - 4.0] | 6.0 [6.0 - 6.0] | 0.50 | n1 |"
    no_cache = table(text, "generation, no cache")
    assert no_cache[0].startswith("| threads | case | ours without the cache (ms) | ours with the KV cache (ms) |")
    assert no_cache[2].split(" | ")[4] == "4.00"
    memory = table(text, "peak memory")
    assert "| ours (MB) | PyTorch (MB) |" in memory[0]
    assert memory[2] == "| 1 | step | 300.0 [300.0 - 300.0] | 200.0 [200.0 - 200.0] | 1.50 | n3 |"
    tokenizer = table(text, "tokenizer")
    assert "| tiktoken (ms) |" in tokenizer[0]
    assert tokenizer[2] == "| 1 | train a BPE | 100.0 [100.0 - 100.0] | - | - | no peer measured |"
    assert "Tiny Shakespeare" not in text  # not measured in this run


def test_every_section_bench_measures_has_its_column_names():
    sections = set(re.findall(r'section="([^"]+)"', (ROOT / "bench.py").read_text(encoding="utf-8")))
    assert sections and sections <= set(bench.COLUMNS)


@pytest.mark.parametrize("argv", [["--quick"], ["--only", "training"], ["--threads", "1"], ["--repeats", "2"],
                                  ["--no-shakespeare"]])
def test_partial_runs_never_write_the_committed_results(argv):
    path = bench.output_path(bench.parse_args(argv))
    assert path.parent == ROOT / "bench-runs" and path.suffix == ".md"


def test_only_a_complete_run_or_out_writes_benchmarks_md(tmp_path):
    assert bench.output_path(bench.parse_args([])) == ROOT / "BENCHMARKS.md"
    assert bench.output_path(bench.parse_args(["--quick", "--out", str(tmp_path / "q.md")])) == tmp_path / "q.md"


def test_render_writes_the_markdown_of_saved_results_beside_them(tmp_path):
    saved = results(shakespeare=None)
    (tmp_path / "run.json").write_text(json.dumps(saved), encoding="utf-8")
    bench.main(["--render", str(tmp_path / "run.json")])
    text = (tmp_path / "run.md").read_text(encoding="utf-8")
    assert text == bench.markdown(saved) + "\n"
    assert "skipped" in text.split("## Tiny Shakespeare", 1)[1]


def test_render_refuses_a_file_that_is_not_results(tmp_path):
    (tmp_path / "other.json").write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(SystemExit, match="error: cannot render .*other.json"):
        bench.main(["--render", str(tmp_path / "other.json")])
    assert not (tmp_path / "other.md").exists()


def test_committed_benchmarks_md_is_the_rendering_of_benchmarks_json():
    saved = json.loads((ROOT / "BENCHMARKS.json").read_text(encoding="utf-8"))
    assert (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8") == bench.markdown(saved) + "\n"


def modern_results():
    """A run's results with the modern section's rows and a tiny-Shakespeare run that trained the modern preset."""
    rows = [dict(section="modern", case="SmolLM2-135M shape forward, B=1, T=256", ours=[0.2], theirs=[0.25], note="f"),
            dict(section="modern", case="greedy", ours=[4.0], theirs=[5.0], note="same 128 tokens: yes"),
            dict(section="modern, KV-cache memory", case="64 + 128 tokens", ours=[11.25], theirs=[33.75], note="m")]

    def eval_rows(offset, spans=False):
        return [dict(iter=iteration, train_loss=3.0 - offset - iteration / 1000,
                     val_loss=3.1 - offset - iteration / 1000, ms_per_iter=40.0,
                     **(dict(spans=[[1.0, 2.0]]) if spans else {})) for iteration in (0, 250)]
    shakespeare = dict(reference={"0": [4.2, 4.2]}, full=dict(rows=eval_rows(0.0), seconds=100.0),
                       adaptive=dict(rows=eval_rows(0.1, spans=True), seconds=110.0),
                       modern=dict(rows=eval_rows(0.2), seconds=120.0))
    saved = results(shakespeare=shakespeare)
    saved["threads"]["1"]["rows"] = rows
    return saved


def test_markdown_renders_the_modern_section_and_the_modern_shakespeare_column():
    text = bench.markdown(modern_results())
    timing = table(text, "modern")
    assert timing[0] == "| threads | case | ours (ms) | transformers (ms) | ratio | note |"
    assert timing[2].split(" | ")[4] == "0.80" and len(timing) == 4
    memory = table(text, "modern, KV-cache memory")
    assert memory[0].startswith("| threads | case | n_kv_heads 3 (MB) | n_kv_heads 9 (multi-head) (MB) |")
    assert memory[2].split(" | ")[4] == "0.33"
    shakespeare = text.split("## Tiny Shakespeare", 1)[1]
    assert "| adaptive span val | modern val |" in shakespeare
    assert "| 250 | 2.7500 | 2.8500 |  | | | 2.7500 | 2.6500 |" in shakespeare
    assert "Modern: 120 s, median 40.0 ms/iter." in shakespeare
    without = modern_results()
    del without["shakespeare"]["modern"]
    assert "modern" not in bench.markdown(without).split("## Tiny Shakespeare", 1)[1].lower()


def test_modern_section_runs_once_at_one_thread():
    assert "modern" in bench.SECTIONS
    assert list(bench.bench_modern(2, True, 1, {})) == []


def test_modern_section_quick_mode_meets_its_exactness_targets():
    # A 2-layer SmolLM2-shaped model (vocabulary 2048) against transformers' LlamaForCausalLM, same weights.
    require_oracle("transformers")
    rows = list(bench.bench_modern(1, True, 1, {}))
    assert [row["section"] for row in rows] == ["modern", "modern", "modern, KV-cache memory"]
    assert float(rows[0]["note"].split("max logit difference ")[1].split(";")[0]) < 1e-4
    assert "same 16 tokens: yes" in rows[1]["note"]
    assert rows[2]["ours"][0] * 3 == pytest.approx(rows[2]["theirs"][0], rel=1e-12)
