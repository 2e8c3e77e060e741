"""Commands that read finished runs and never train: eval, generate (sample), report.

May import stages and everything below; never bench or the CLI."""
