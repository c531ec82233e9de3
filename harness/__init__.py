"""Orchestration, in one place, for noxfile.py's sessions (standard library only: nox's own
Python imports it; nothing here imports torch, numpy or vLLM at module level).

  project.py   the repository root and pyproject.toml's dependency groups
  spec.py      the vLLM under test (VLLM_UNDER_TEST, an A/B side, a candidate), parsed once
  options.py   the one parser of the sessions' options among pytest's arguments; GLOB=F
  runner.py    what the harness asks of a session (Runner), and NoxRunner over a nox session
  install.py   every install: session venv, bisection candidate, interpreter venv, .nox/ab-*
  sessions.py  the sessions' data (expected backends, interpreter paths) and pytest runs
  ab.py        interleaved A/B: the runner half (reports/ab.py judges)
  bisect.py    one check, one exit code; the nox -s bisect driver
"""
