from assistant.engine.torch_engine import TorchEngine
from assistant.evals.humaneval import load_problems, program_for, run_humaneval
from assistant.evals.next_line import line_cases, run_next_line
from assistant.evals.sandbox import SandboxLimits, run_program

FAST = SandboxLimits(timeout_s=5, cpu_s=5)


def test_sandbox_refuses_commands():
    # Pass, fail, timeout, crash, memory and network outcomes: tests/assistant/evals/test_sandbox.py.
    result = run_program("import os; os.system('true')", FAST)
    assert (result.passed, result.reason) == (False, "failed")


def test_sandbox_runs_in_another_process_and_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The child cannot see our globals, and its cwd is a fresh temporary directory: a file
    # it writes there does not land in ours.
    assert run_program("assert 'FAST' not in globals()", FAST).passed
    assert run_program(f"import os; assert os.getcwd() != {str(tmp_path)!r}", FAST).passed
    assert run_program("open('marker', 'w').write('x')", FAST).passed
    assert not (tmp_path / "marker").exists()


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    problems = load_problems()
    assert len(problems) == 164
    for problem in problems[:5]:
        assert run_program(program_for(problem, problem["canonical_solution"]), FAST).passed
        assert not run_program(program_for(problem, "    return None\n"), FAST).passed


def test_humaneval_and_next_line_run_on_a_real_model(trained_model, code_repo):
    loaded, _ = trained_model
    engine = TorchEngine(loaded.model, loaded.tokenizer)
    result = run_humaneval(engine, limit=2, max_new_tokens=16, limits=FAST)
    assert len(result.passed) + len(result.failed) == 2 and len(result.completions) == 2
    cases = line_cases(code_repo, count=6)
    assert len(cases) == 6 and all(c.line.strip() for c in cases)
    for case in cases:  # the cut puts the line back exactly where it was
        assert case.prefix.endswith("\n") and case.suffix[:1] in ("\n", "")
    lines = run_next_line(engine, cases, max_new_tokens=8)
    assert lines.total == 6 and 0 <= lines.hits <= 6 and len(lines.examples) == 5
