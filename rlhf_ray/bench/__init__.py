"""The benchmark harness (`rlhf-ray bench`) and its report.

May import stages and everything below; never tools or the CLI."""
