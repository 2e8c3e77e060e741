"""Configuration: the typed schema (`schema.Config`), YAML/override parsing, checks that run
before any actor starts, and the key help (`rlhf-ray config --explain`).

May import: errors, store."""
