"""Pipeline stages (`rlhf-ray <stage>`): each exposes run(cfg, run_dir, resume) -> summary dict."""
