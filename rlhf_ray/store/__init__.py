"""What is stored and where: atomic files and checkpoints, reference names (embedded assets,
paths, hub ids), directories published through the object store, provenance (run_info.json,
console.log, model cards) and seeded random streams.

May import: errors, batch. Nothing above (no config, models or Ray roles)."""
