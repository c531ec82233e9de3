"""pytest suites that hold an implementation under test to an oracle."""
